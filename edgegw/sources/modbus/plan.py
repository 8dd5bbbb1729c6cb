"""Read planning: merge the tags of a device into as few requests as the protocol allows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from edgegw.sources.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ModbusTag,
)

BIT_GAP_FACTOR = 16
"""A gap of N registers costs as many bytes on the wire as a gap of 16*N bits."""


@dataclass(slots=True)
class ReadBlock:
    """One read request: `count` registers (or bits) from `start` of `table`, and its tags."""

    table: str
    start: int
    count: int
    tags: list[ModbusTag] = field(default_factory=list)

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


def plan_reads(tags: Iterable[ModbusTag], max_gap: int) -> list[ReadBlock]:
    """Group tags into read blocks.

    Tags of one table are sorted by address; a tag joins the current block when the unused
    addresses between them are at most `max_gap` (registers; 16 times that for bits) and the
    block stays within the protocol limit (125 registers, 2000 bits). Overlapping tags (a
    bool on bit 3 and a uint16 on the same register) share the register.
    """
    by_table: dict[str, list[ModbusTag]] = {}
    for tag in tags:
        by_table.setdefault(tag.address.table, []).append(tag)
    blocks: list[ReadBlock] = []
    for table in sorted(by_table):
        is_bits = table in BIT_TABLES
        limit = MAX_BITS_PER_READ if is_bits else MAX_REGISTERS_PER_READ
        gap = max_gap * BIT_GAP_FACTOR if is_bits else max_gap
        ordered = sorted(by_table[table], key=lambda t: (t.address.offset, t.register_count))
        current: ReadBlock | None = None
        for tag in ordered:
            start = tag.address.offset
            end = start + tag.register_count
            if current is not None:
                merged_end = max(current.end, end)
                if start - current.end <= gap and merged_end - current.start <= limit:
                    current.count = merged_end - current.start
                    current.tags.append(tag)
                    continue
            current = ReadBlock(table, start, end - start, [tag])
            blocks.append(current)
    return blocks
