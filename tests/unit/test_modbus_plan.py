"""Coalescing: nearby tags share one request; limits and gaps split them."""

from __future__ import annotations

from typing import Any

from edgegw.sources.modbus.config import ModbusTag
from edgegw.sources.modbus.plan import plan_reads


def tag(name: str, address: str, type_: str = "uint16", **extra: Any) -> ModbusTag:
    return ModbusTag.model_validate({"name": name, "address": address, "type": type_, **extra})


def spans(blocks: list[Any]) -> list[tuple[str, int, int, list[str]]]:
    return [(b.table, b.start, b.count, [t.name for t in b.tags]) for b in blocks]


def test_nearby_holding_registers_cost_one_request() -> None:
    tags = [
        tag("a", "holding:100", "float32"),
        tag("b", "holding:10.3", "bool"),
        tag("c", "holding:10", "uint16"),
        tag("d", "holding:20", "int32"),
    ]
    assert spans(plan_reads(tags, max_gap=16)) == [
        ("holding", 10, 12, ["b", "c", "d"]),
        ("holding", 100, 2, ["a"]),
    ]


def test_gap_limit_splits_and_zero_gap_merges_only_adjacent() -> None:
    tags = [tag("a", "holding:0"), tag("b", "holding:1"), tag("c", "holding:3")]
    assert spans(plan_reads(tags, max_gap=0)) == [
        ("holding", 0, 2, ["a", "b"]),
        ("holding", 3, 1, ["c"]),
    ]
    assert spans(plan_reads(tags, max_gap=1)) == [("holding", 0, 4, ["a", "b", "c"])]


def test_a_request_never_exceeds_125_registers() -> None:
    tags = [tag(f"t{i}", f"holding:{i}") for i in range(300)]
    blocks = plan_reads(tags, max_gap=16)
    assert [b.count for b in blocks] == [125, 125, 50]
    assert sum(len(b.tags) for b in blocks) == 300
    assert blocks[1].start == 125


def test_multi_register_tag_is_never_split() -> None:
    tags = [tag("a", "holding:0"), tag("s", "holding:120", "string", length=10)]
    blocks = plan_reads(tags, max_gap=124)
    assert spans(blocks) == [("holding", 0, 1, ["a"]), ("holding", 120, 10, ["s"])]


def test_bits_merge_up_to_2000_and_tables_stay_apart() -> None:
    tags = [tag(f"c{i}", f"coil:{i * 10}", "bool") for i in range(250)]
    tags += [tag("d", "discrete:5", "bool"), tag("i", "input:5")]
    blocks = plan_reads(tags, max_gap=1)
    coil_blocks = [b for b in blocks if b.table == "coil"]
    assert [b.count for b in coil_blocks] == [1991, 491]
    assert {b.table for b in blocks} == {"coil", "discrete", "input"}
    assert all(b.count <= 2000 for b in coil_blocks)


def test_overlapping_tags_share_registers() -> None:
    tags = [
        tag("word", "holding:10"),
        tag("bit0", "holding:10.0", "bool"),
        tag("wide", "holding:9", "uint32"),
    ]
    assert spans(plan_reads(tags, max_gap=0)) == [("holding", 9, 2, ["wide", "word", "bit0"])]
