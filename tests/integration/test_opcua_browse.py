"""Walking a real asyncua server's address space, and the YAML tag list made from it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import yaml
from asyncua import Client, Server, ua
from asyncua.ua.uaerrors import BadTooManyOperations

from edgegw.errors import EdgeGwError
from edgegw.sources.opcua.browse import (
    BrowsedVariable,
    browse_variables,
    format_node_id,
    render_tags_yaml,
    tag_name_for,
    unique_tag_names,
)
from edgegw.sources.opcua.nodeid import parse_node_ref
from tests.support.tasks import cancel_leftover_tasks

# Every async test talks to the one server the module starts, so they share its event loop.
on_server = pytest.mark.asyncio(loop_scope="module")

FILLER_NS = "urn:edgegw:test:filler"
DUMMY_NS = "urn:edgegw:test:dummy"  # registered first, so the filler namespace is index 3
NSU = f"nsu={FILLER_NS};"
TRICKY_ID = 'Recipe "A" #1: name'
GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")
NAME_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


async def build_address_space(server: Server) -> None:
    """Objects/
    Filler/                      (folder, s=Filler)
      Speed        Double, 1/min (has EngineeringUnits, EURange, a Setpoint component)
        Setpoint   Double
      Count        Int32, numeric id
      Recipe       String, id with a quote, a hash and a colon
      Level        Percent (vendor subtype of Double)
      Cycle        Duration
      Secret       Double, not readable
      Temperatur Ölbad  Float, GUID id
      Raw          ByteString id
      Line/        folder
        Back       Organizes -> Filler (a cycle)
        Deep/Deeper/Value  Int16 at depth 5 below Objects
      Alias/       folder that organizes Count again (second path to one node)
    Other/         folder in the dummy namespace
      Flag         Boolean
    """
    await server.register_namespace(DUMMY_NS)
    ns = await server.register_namespace(FILLER_NS)
    dummy = await server.get_namespace_index(DUMMY_NS)
    assert ns == 3

    def qn(name: str, index: int = ns) -> ua.QualifiedName:
        return ua.QualifiedName(name, index)

    objects = server.nodes.objects
    filler = await objects.add_folder(ua.NodeId("Filler", ns), qn("Filler"))
    speed = await filler.add_variable(ua.NodeId("Filler.Speed", ns), qn("Speed"), 0.0)
    await speed.add_property(
        ua.NodeId("Filler.Speed.EU", ns),
        qn("EngineeringUnits", 0),
        ua.EUInformation(DisplayName=ua.LocalizedText("1/min"), UnitId=4534321),
        datatype=ua.NodeId(ua.ObjectIds.EUInformation),
    )
    await speed.add_property(
        ua.NodeId("Filler.Speed.EURange", ns),
        qn("EURange", 0),
        ua.Range(0.0, 1200.0),
        datatype=ua.NodeId(ua.ObjectIds.Range),
    )
    await speed.add_variable(ua.NodeId("Filler.Speed.Setpoint", ns), qn("Setpoint"), 0.0)
    count = await filler.add_variable(ua.NodeId(1001, ns), qn("Count"), 0, ua.VariantType.Int32)
    await filler.add_variable(ua.NodeId(TRICKY_ID, ns), qn("Recipe"), "none")
    percent = await server.nodes.base_data_type.get_child(["0:Number", "0:Double"])
    percent_type = await percent.add_data_type(ua.NodeId("Percent", ns), qn("Percent"))
    await filler.add_variable(
        ua.NodeId("Filler.Level", ns), qn("Level"), 50.0, datatype=percent_type.nodeid
    )
    await filler.add_variable(
        ua.NodeId("Filler.Cycle", ns),
        qn("Cycle"),
        1500.0,
        datatype=ua.NodeId(ua.ObjectIds.Duration),
    )
    secret = await filler.add_variable(ua.NodeId("Filler.Secret", ns), qn("Secret"), 1.0)
    write_only = ua.DataValue(ua.Variant(ua.AccessLevel.CurrentWrite.mask, ua.VariantType.Byte))
    await secret.write_attribute(ua.AttributeIds.AccessLevel, write_only)
    await secret.write_attribute(ua.AttributeIds.UserAccessLevel, write_only)
    await filler.add_variable(
        ua.NodeId(GUID, ns), qn("Temperatur Ölbad"), 21.5, ua.VariantType.Float
    )
    await filler.add_variable(ua.NodeId(b"\x00\xffraw", ns), qn("Raw"), 7, ua.VariantType.UInt16)

    line = await filler.add_folder(ua.NodeId("Filler.Line", ns), qn("Line"))
    back = await line.add_folder(ua.NodeId("Filler.Line.Back", ns), qn("Back"))
    await back.add_reference(
        filler.nodeid, ua.ObjectIds.Organizes, forward=True, bidirectional=False
    )
    deep = await line.add_folder(ua.NodeId("Filler.Line.Deep", ns), qn("Deep"))
    deeper = await deep.add_folder(ua.NodeId("Filler.Line.Deep.Deeper", ns), qn("Deeper"))
    await deeper.add_variable(
        ua.NodeId("Filler.Line.Deep.Deeper.Value", ns), qn("Value"), 3, ua.VariantType.Int16
    )
    alias = await filler.add_folder(ua.NodeId("Filler.Alias", ns), qn("Alias"))
    await alias.add_reference(
        count.nodeid, ua.ObjectIds.Organizes, forward=True, bidirectional=False
    )

    other = await objects.add_folder(ua.NodeId("Other", dummy), qn("Other", dummy))
    await other.add_variable(ua.NodeId("Other.Flag", dummy), qn("Flag", dummy), True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client() -> AsyncIterator[Client]:
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/edgegw-test/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    await build_address_space(server)
    await server.start()
    assert server.bserver is not None
    port = server.bserver.port
    try:
        async with Client(f"opc.tcp://127.0.0.1:{port}/edgegw-test/", timeout=5) as connected:
            yield connected
    finally:
        await server.stop()
        await cancel_leftover_tasks()  # this module's loop: the per-test cleanup cannot see it


def by_path(variables: list[BrowsedVariable]) -> dict[str, BrowsedVariable]:
    return {"/".join(v.path): v for v in variables}


@on_server
async def test_walk_finds_every_variable_once_with_namespace_uris(client: Client) -> None:
    found = by_path(await browse_variables(client))

    assert {path: v.node_id for path, v in found.items()} == {
        "Filler/Speed": NSU + "s=Filler.Speed",
        "Filler/Speed/Setpoint": NSU + "s=Filler.Speed.Setpoint",
        "Filler/Count": NSU + "i=1001",
        "Filler/Recipe": NSU + "s=" + TRICKY_ID,
        "Filler/Level": NSU + "s=Filler.Level",
        "Filler/Cycle": NSU + "s=Filler.Cycle",
        "Filler/Secret": NSU + "s=Filler.Secret",
        "Filler/Temperatur Ölbad": NSU + f"g={GUID}",
        "Filler/Raw": NSU + "b=AP9yYXc=",
        "Filler/Line/Deep/Deeper/Value": NSU + "s=Filler.Line.Deep.Deeper.Value",
        "Other/Flag": f"nsu={DUMMY_NS};s=Other.Flag",
    }
    # The Server object (i=2253) and the properties of Speed are not tags.
    assert not any(v.node_id.startswith("i=") for v in found.values())


@on_server
async def test_types_units_and_access(client: Client) -> None:
    found = by_path(await browse_variables(client, start=NSU + "s=Filler"))

    assert found["Speed"].data_type == "Double"
    assert found["Speed"].unit == "1/min"
    assert found["Count"].data_type == "Int32"
    assert found["Count"].unit is None
    assert found["Recipe"].data_type == "String"
    assert found["Level"].data_type == "Percent (Double)"
    assert found["Cycle"].data_type == "Duration"
    assert found["Temperatur Ölbad"].data_type == "Float"
    assert found["Raw"].data_type == "UInt16"
    assert found["Secret"].readable is False
    assert all(v.readable for path, v in found.items() if path != "Secret")


@on_server
async def test_order_is_depth_first_in_server_order(client: Client) -> None:
    paths = ["/".join(v.path) for v in await browse_variables(client, start=NSU + "s=Filler")]
    assert paths.index("Speed") < paths.index("Speed/Setpoint") < paths.index("Count")
    assert paths[-1] == "Line/Deep/Deeper/Value"


@on_server
async def test_start_subtree_and_depth_limit(client: Client) -> None:
    under_deep = await browse_variables(client, start=NSU + "s=Filler.Line.Deep")
    assert [v.path for v in under_deep] == [("Deeper", "Value")]

    # Line/Back organizes Filler again: the walk follows it once and does not loop.
    under_line = by_path(await browse_variables(client, start=NSU + "s=Filler.Line"))
    assert "Deep/Deeper/Value" in under_line
    assert "Back/Filler/Speed" in under_line
    assert not any(path.startswith("Back/Filler/Line") for path in under_line)

    shallow = by_path(await browse_variables(client, start=NSU + "s=Filler", max_depth=1))
    assert "Speed" in shallow
    assert "Speed/Setpoint" not in shallow
    assert "Line/Deep/Deeper/Value" not in shallow

    from_objects = by_path(await browse_variables(client, max_depth=4))
    assert "Filler/Speed/Setpoint" in from_objects
    assert "Filler/Line/Deep/Deeper/Value" not in from_objects  # depth 5
    assert "Filler/Line/Deep/Deeper/Value" in by_path(await browse_variables(client, max_depth=5))


@on_server
async def test_start_by_index_or_on_a_variable(client: Client) -> None:
    by_index = await browse_variables(client, start="ns=3;s=Filler.Line.Deep")
    assert [v.node_id for v in by_index] == [NSU + "s=Filler.Line.Deep.Deeper.Value"]

    on_variable = await browse_variables(client, start=NSU + "s=Filler.Speed")
    assert [(v.path, v.node_id) for v in on_variable] == [
        (("Speed",), NSU + "s=Filler.Speed"),
        (("Setpoint",), NSU + "s=Filler.Speed.Setpoint"),
    ]


@on_server
async def test_server_object_only_on_request(client: Client) -> None:
    with_server = await browse_variables(client, include_server=True, max_depth=2)
    assert "i=2255" in {v.node_id for v in with_server}  # Server/NamespaceArray
    inside = await browse_variables(client, start="i=2253", max_depth=1)
    assert "i=2255" in {v.node_id for v in inside}


@on_server
async def test_node_ids_read_back_through_the_config_parser(client: Client) -> None:
    namespaces = await client.get_namespace_array()
    for variable in await browse_variables(client):
        node_id = parse_node_ref(variable.node_id).resolve(namespaces)
        name = await client.get_node(node_id).read_browse_name()
        assert name.Name == variable.path[-1]


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ("nsu=urn:nowhere;s=Filler", r"urn:nowhere.*not in the server's namespace array"),
        (NSU + "s=NoSuchNode", r"is not on the server"),
        ("Filler", r"not a node id"),
    ],
)
@on_server
async def test_bad_start_is_explained(client: Client, start: str, message: str) -> None:
    with pytest.raises(EdgeGwError, match=message):
        await browse_variables(client, start=start)


@on_server
async def test_too_many_nodes_stops_with_advice(client: Client) -> None:
    with pytest.raises(EdgeGwError, match=r"more than 5 nodes.*--under.*--depth"):
        await browse_variables(client, max_nodes=5)
    with pytest.raises(EdgeGwError, match="at least 1"):
        await browse_variables(client, max_depth=0)


class PagingServer:
    """Wraps the client's Browse so the server seems to page references.

    At most `page` references per answer, at most `points` continuation points alive at
    once (further nodes get BadNoContinuationPoints), as small PLCs do.
    """

    def __init__(self, uaclient: Any, page: int, points: int) -> None:
        self.real_browse = uaclient.browse
        self.page = page
        self.points = points
        self.open: dict[bytes, list[ua.ReferenceDescription]] = {}
        self.next_calls = 0
        self.refused = 0

    def _paged(self, status: ua.StatusCode, refs: list[ua.ReferenceDescription]) -> Any:
        if len(refs) <= self.page:
            return ua.BrowseResult(StatusCode=status, References=refs)
        point = uuid.uuid4().bytes
        self.open[point] = refs[self.page :]
        return ua.BrowseResult(
            StatusCode=status, ContinuationPoint=point, References=refs[: self.page]
        )

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        results = []
        for result in await self.real_browse(params):
            if len(result.References) > self.page and len(self.open) >= self.points:
                self.refused += 1
                results.append(
                    ua.BrowseResult(
                        StatusCode=ua.StatusCode(ua.StatusCodes.BadNoContinuationPoints)
                    )
                )
            else:
                results.append(self._paged(result.StatusCode, result.References))
        return results

    async def browse_next(self, params: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        assert params.ReleaseContinuationPoints is False
        self.next_calls += 1
        return [
            self._paged(ua.StatusCode(), self.open.pop(point))
            for point in params.ContinuationPoints
        ]


@on_server
async def test_continuation_points_and_operation_limits_are_honoured(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await browse_variables(client)

    pager = PagingServer(client.uaclient, page=1, points=1)
    monkeypatch.setattr(client.uaclient, "browse", pager.browse)
    monkeypatch.setattr(client.uaclient, "browse_next", pager.browse_next)
    real_read = client.uaclient.read
    read_sizes: list[int] = []

    async def strict_read(params: ua.ReadParameters) -> list[ua.DataValue]:
        read_sizes.append(len(params.NodesToRead))
        if len(params.NodesToRead) > 7:
            raise BadTooManyOperations()
        return await real_read(params)

    monkeypatch.setattr(client.uaclient, "read", strict_read)

    assert await browse_variables(client) == expected
    assert pager.open == {}  # every continuation point was followed to its end
    assert any(size > 7 for size in read_sizes)  # refused, then split in halves
    assert pager.next_calls > 0  # references came in pages
    assert pager.refused > 0  # BadNoContinuationPoints, browsed again later


# --- names and YAML (no server needed) -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (["Filler", "Speed"], "Filler_Speed"),
        (["Line 4", "Motor (rpm)"], "Line_4_Motor_rpm"),
        (["Temperatur Ölbad", "Wert°C"], "Temperatur_Olbad_Wert_C"),
        (["温度"], "tag"),
        (["-x-", "a--b"], "x-_a--b"),
        (["__a__", "__b"], "a_b"),
        (["Keep", "CASE"], "Keep_CASE"),
    ],
)
def test_tag_name_for(path: list[str], name: str) -> None:
    assert tag_name_for(path) == name


def test_long_names_keep_their_leaf() -> None:
    path = ["Plant", "Area51", "ProductionLine4", "FillingStation", "Valve7", "PositionFeedback"]
    name = tag_name_for([*path, "VeryLongSignalNameIndeed"])
    assert len(name) <= 64
    assert NAME_RULE.match(name)
    assert name.endswith("PositionFeedback_VeryLongSignalNameIndeed")
    assert not name.startswith("_")
    assert len(tag_name_for(["x" * 200])) == 64


def test_unique_names_never_steal_a_natural_name() -> None:
    names = unique_tag_names([["a"], ["a"], ["a_2"], ["A"], ["a"], ["y" * 70], ["y" * 70]])
    assert names == ["a", "a_3", "a_2", "A", "a_4", "y" * 64, "y" * 62 + "_2"]
    assert all(NAME_RULE.match(n) and len(n) <= 64 for n in names)


def variable(node_id: str, *path: str, **extra: Any) -> BrowsedVariable:
    fields: dict[str, Any] = {"data_type": "Double", "unit": None, "readable": True}
    fields.update(extra)
    return BrowsedVariable(node_id=node_id, path=tuple(path), **fields)


NASTY_IDS = [
    'nsu=urn:x;s=say "hi" # not a comment: really',
    "nsu=urn:x;s=back\\slash\ttab\nnewline",
    "nsu=urn:x;s=Füllstand ✓ 𝄞",
    "nsu=urn:x;s=line\u2028sep\x85nel\x7fdel\x9fc1",
    "nsu=urn:x;s={flow}, [seq]: & * ! | > ' % @ `",
]


def test_yaml_round_trips_every_node_id() -> None:
    variables = [variable(node_id, "Tag", str(i)) for i, node_id in enumerate(NASTY_IDS)]
    text = render_tags_yaml(variables)
    assert yaml.safe_load(text) == {
        "tags": [{"name": f"Tag_{i}", "node": node_id} for i, node_id in enumerate(NASTY_IDS)]
    }


def test_yaml_units_comments_skips_and_odd_names() -> None:
    variables = [
        variable("nsu=urn:x;s=Speed", "Speed", unit="1/min"),
        variable("nsu=urn:x;s=Secret", "Secret", readable=False),
        variable("i=2255", "123", data_type=None),
        variable("nsu=urn:x;s=On", "on"),
        variable("nsu=urn:x;s=Long", "Long", unit="u" * 40),
        variable("nsu=urn:x;s=Weird", "Weird", unit="#x\n- {evil: 1}", data_type="Int32"),
    ]
    text = render_tags_yaml(variables)
    assert yaml.safe_load(text) == {
        "tags": [
            {"name": "Speed", "node": "nsu=urn:x;s=Speed", "unit": "1/min"},
            {"name": "123", "node": "i=2255"},
            {"name": "on", "node": "nsu=urn:x;s=On"},
            {"name": "Long", "node": "nsu=urn:x;s=Long"},  # too long for the config's unit
            {"name": "Weird", "node": "nsu=urn:x;s=Weird", "unit": "#x\n- {evil: 1}"},
        ]
    }
    lines = text.splitlines()
    assert lines[0] == "tags:"
    assert lines[1].startswith("  - {name: Speed, ")
    assert lines[1].endswith("   # Double, 1/min")
    assert lines[2].endswith("# unknown type")
    assert "u" * 40 in lines[4]
    assert lines[-1] == "  # skipped, not readable: nsu=urn:x;s=Secret (Double)"
    assert len(lines) == 7  # the evil unit's newline stayed inside the quotes and the comment


def test_yaml_with_nothing_readable_is_still_a_list() -> None:
    text = render_tags_yaml([variable("nsu=urn:x;s=Secret", "Secret", readable=False)])
    assert yaml.safe_load(text) == {"tags": []}
    assert "skipped, not readable" in text


@on_server
async def test_rendered_server_tags_are_valid_config_names(client: Client) -> None:
    variables = await browse_variables(client)
    loaded = yaml.safe_load(render_tags_yaml(variables))
    names = [tag["name"] for tag in loaded["tags"]]
    assert len(names) == len(set(names)) == len([v for v in variables if v.readable])
    assert all(NAME_RULE.match(n) and len(n) <= 64 for n in names)
    speed = next(tag for tag in loaded["tags"] if tag["name"] == "Filler_Speed")
    assert speed == {"name": "Filler_Speed", "node": NSU + "s=Filler.Speed", "unit": "1/min"}
    recipe = next(tag for tag in loaded["tags"] if tag["name"] == "Filler_Recipe")
    assert recipe["node"] == NSU + "s=" + TRICKY_ID
    namespaces = await client.get_namespace_array()
    for tag in loaded["tags"]:
        node_id = parse_node_ref(tag["node"]).resolve(namespaces)
        assert format_node_id(node_id, namespaces) == tag["node"]
