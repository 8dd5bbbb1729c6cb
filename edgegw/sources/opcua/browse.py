"""Walk an OPC UA server's address space and turn its variables into a YAML tag list.

A PLC can expose tens of thousands of variables, so every service call carries many nodes at
once (one Browse per level of the tree, one Read for the attributes of many variables), sized
by the server's advertised operation limits. Node ids are written with the namespace URI
(`nsu=`) rather than the index (`ns=`): the index of a namespace can change when the server
restarts or its configuration changes, the URI does not.
"""

from __future__ import annotations

import base64
import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import BadTooManyOperations, UaError, UaStatusCodeError

from edgegw.errors import EdgeGwError
from edgegw.sources.opcua.nodeid import NamespaceMissing, parse_node_ref

_T = TypeVar("_T")
_R = TypeVar("_R")


def _node_id(identifier: object, namespace_index: int = 0) -> ua.NodeId:
    # asyncua annotates NodeId with its wire-type marker classes (ua.Int32, ua.Int16, ...);
    # at run time it takes, and returns, plain ints, strs, bytes and UUIDs.
    return ua.NodeId(identifier, namespace_index)  # type: ignore[arg-type]


OBJECTS_FOLDER = _node_id(ObjectIds.ObjectsFolder)
# The server's own plumbing below Objects: diagnostics, capabilities, alias tables. Not
# process data, and the Server object alone holds hundreds of variables.
SERVER_OBJECTS = frozenset({_node_id(ObjectIds.Server), _node_id(ObjectIds.Aliases)})

MAX_TAG_NAME = 64  # the config's limit on a tag name
MAX_UNIT = 32  # the config's limit on a tag's unit; a longer one stays in the comment
DEFAULT_BATCH = 500  # nodes per request when the server advertises no limit
_MAX_TYPE_ANCESTRY = 16  # HasSubtype hops from a vendor data type up to a standard one

_HIERARCHICAL = _node_id(ObjectIds.HierarchicalReferences)
_HAS_PROPERTY = _node_id(ObjectIds.HasProperty)
_HAS_SUBTYPE = _node_id(ObjectIds.HasSubtype)
_CURRENT_READ = ua.AccessLevel.CurrentRead.mask  # AccessLevel members are bit indexes
_NO_CONTINUATION_POINTS = StatusCodes.BadNoContinuationPoints
_LIMIT_NODES = {
    "browse": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
    "read": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "translate": (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds
    ),
}


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    """One Variable node found by the walk."""

    node_id: str
    """`nsu=<namespace uri>;<s=|i=|g=|b=>...`, or `i=...` for the standard namespace."""
    path: tuple[str, ...]
    """Browse names from below the start node down to this variable."""
    data_type: str | None
    """Built-in type name (Double, Int32, ...); a vendor type as `Name (BuiltinBase)`."""
    unit: str | None
    """Display name of the EngineeringUnits property, if the variable has one."""
    readable: bool
    """The server lets this session read the value."""


# --- node id text ---------------------------------------------------------------------------


def format_node_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """The canonical text of a node id, with the namespace written as its URI.

    This is the form `edgegw.sources.opcua.nodeid.parse_node_ref` reads back.
    """
    part = _identifier_part(node_id)
    index = node_id.NamespaceIndex
    if index == 0:
        return part
    # A URI holding ';' would split the text in the wrong place; an index the server does not
    # list cannot be turned into a URI. Both keep the (less stable) index rather than guess.
    if index < len(namespaces) and ";" not in namespaces[index]:
        return f"nsu={namespaces[index]};{part}"
    return f"ns={index};{part}"


def _identifier_part(node_id: ua.NodeId) -> str:
    identifier = node_id.Identifier
    if isinstance(identifier, bytes):
        return "b=" + base64.b64encode(identifier).decode("ascii")
    if isinstance(identifier, uuid.UUID):
        return f"g={identifier}"
    if isinstance(identifier, str):
        return f"s={identifier}"
    return f"i={identifier}"


def _resolve_start(text: str, namespaces: list[str]) -> ua.NodeId:
    try:
        return parse_node_ref(text).resolve(namespaces)
    except NamespaceMissing as exc:
        listed = ", ".join(namespaces)
        raise EdgeGwError(f"start node {text}: {exc} (the server has: {listed})") from exc
    except ValueError as exc:
        raise EdgeGwError(f"start node {text}: {exc}") from exc


# --- the walk -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    node_id: ua.NodeId
    path: tuple[str, ...]
    node_class: ua.NodeClass
    order: tuple[int, ...]
    """Position of each step among its siblings: sorting by it gives depth-first order."""


async def browse_variables(
    client: Client,
    *,
    start: str | None = None,
    max_depth: int = 10,
    max_nodes: int = 50_000,
    include_server: bool = False,
) -> list[BrowsedVariable]:
    """Every Variable below `start` (default: the Objects folder), at most `max_depth` deep.

    Follows hierarchical references forward, breadth first, each node once (address spaces
    have cycles). The standard Server object (i=2253) and Aliases folder are skipped unless
    `include_server` or `start` points into them: they hold diagnostics, not process data.
    Properties of a variable (its EngineeringUnits, EURange, ...) describe it and are not
    listed as variables themselves. The result is in depth-first order, siblings in the
    order the server gives them.
    """
    if max_depth < 1:
        raise EdgeGwError(f"the browse depth must be at least 1, got {max_depth}")
    try:
        namespaces: list[str] = await client.get_namespace_array()
        limits = await _operation_limits(client)
        start_id = _resolve_start(start, namespaces) if start else OBJECTS_FOLDER
        start_text = start or "the Objects folder (i=85)"
        found = await _walk(
            client,
            start_id,
            start_text,
            max_depth,
            max_nodes,
            include_server,
            namespaces,
            limits["browse"],
        )
        return await _describe(client, found, namespaces, limits)
    except UaStatusCodeError as exc:
        raise EdgeGwError(f"the OPC UA server refused the browse: {exc}") from exc
    except UaError as exc:
        raise EdgeGwError(f"browsing the OPC UA server failed: {exc}") from exc
    except (TimeoutError, ConnectionError) as exc:
        raise EdgeGwError(
            f"the OPC UA server stopped answering during the browse ({type(exc).__name__})"
        ) from exc


async def _operation_limits(client: Client) -> dict[str, int]:
    """Nodes per request for each service: the server's limit, capped at DEFAULT_BATCH."""
    names = list(_LIMIT_NODES)
    values = await _read(
        client, [(_node_id(_LIMIT_NODES[n]), AttributeIds.Value) for n in names], DEFAULT_BATCH
    )
    limits: dict[str, int] = {}
    for name, value in zip(names, values, strict=True):
        advertised = _good_value(value)
        # 0 or an unreadable limit means "no limit"; a huge request still risks the
        # server's message size limit, so never send more than DEFAULT_BATCH at once.
        if isinstance(advertised, int) and advertised > 0:
            limits[name] = min(advertised, DEFAULT_BATCH)
        else:
            limits[name] = DEFAULT_BATCH
    return limits


async def _walk(
    client: Client,
    start_id: ua.NodeId,
    start_text: str,
    max_depth: int,
    max_nodes: int,
    include_server: bool,
    namespaces: Sequence[str],
    batch: int,
) -> list[_Found]:
    start_class, start_name = await _read_start(client, start_id, start_text)
    start_node = _Found(start_id, (), start_class, ())
    variables: list[_Found] = []
    if start_class == ua.NodeClass.Variable:
        variables.append(_Found(start_id, (start_name,), start_class, ()))
    seen = {start_id}
    frontier = [start_node]
    for _depth in range(max_depth):
        children = await _browse_children(client, [f.node_id for f in frontier], batch)
        next_frontier: list[_Found] = []
        for parent, references in zip(frontier, children, strict=True):
            for position, ref in enumerate(references):
                node_id = _local_node_id(ref.NodeId, namespaces)
                if node_id is None or node_id in seen:
                    continue
                if node_id in SERVER_OBJECTS and not include_server:
                    continue
                if (
                    parent.node_class == ua.NodeClass.Variable
                    and ref.ReferenceTypeId == _HAS_PROPERTY
                ):
                    continue  # metadata of the parent variable, read separately
                seen.add(node_id)
                if len(seen) - 1 > max_nodes:
                    raise EdgeGwError(
                        f"more than {max_nodes} nodes below {start_text}; narrow the walk "
                        "with --under <node id> or a smaller --depth"
                    )
                child = _Found(
                    node_id,
                    (*parent.path, ref.BrowseName.Name or ""),
                    ref.NodeClass,
                    (*parent.order, position),
                )
                if child.node_class == ua.NodeClass.Variable:
                    variables.append(child)
                next_frontier.append(child)
        frontier = next_frontier
        if not frontier:
            break
    variables.sort(key=lambda v: v.order)
    return variables


async def _read_start(
    client: Client, start_id: ua.NodeId, start_text: str
) -> tuple[ua.NodeClass, str]:
    node_class, browse_name = await _read(
        client,
        [(start_id, AttributeIds.NodeClass), (start_id, AttributeIds.BrowseName)],
        2,
    )
    if node_class.StatusCode is not None and not node_class.StatusCode.is_good():
        raise EdgeGwError(
            f"start node {start_text} is not on the server ({node_class.StatusCode.name})"
        )
    node_class_value = _good_value(node_class)
    if not isinstance(node_class_value, int):
        raise EdgeGwError(
            f"start node {start_text}: the server did not say what kind of node it is"
        )
    name = _good_value(browse_name)
    return (
        ua.NodeClass(node_class_value),
        name.Name if isinstance(name, ua.QualifiedName) and name.Name else start_text,
    )


def _local_node_id(target: ua.ExpandedNodeId, namespaces: Sequence[str]) -> ua.NodeId | None:
    """The target as a plain NodeId of this server; None for a node on another server."""
    if getattr(target, "ServerIndex", 0):
        return None
    index: int = target.NamespaceIndex
    uri = getattr(target, "NamespaceUri", None)
    if uri:
        if uri not in namespaces:
            return None
        index = list(namespaces).index(uri)
    # A fresh NodeId: references come back as ExpandedNodeIds, and the seen-set must
    # treat both forms of one node as the same key.
    return _node_id(target.Identifier, index)


async def _browse_children(
    client: Client, node_ids: list[ua.NodeId], batch: int
) -> list[list[ua.ReferenceDescription]]:
    """Forward hierarchical references to Objects and Variables of every node, in batches."""
    references: list[list[ua.ReferenceDescription]] = [[] for _ in node_ids]
    pending = list(range(len(node_ids)))
    while pending:
        retry: list[int] = []
        for chunk in _chunks(pending, batch):
            descriptions = [_browse_description(node_ids[i]) for i in chunk]
            results = await _call_adaptive(descriptions, lambda part: _browse(client, part))
            continuations: dict[int, bytes] = {}
            for i, result in zip(chunk, results, strict=True):
                if result.StatusCode.value == _NO_CONTINUATION_POINTS:
                    retry.append(i)  # the server ran out of continuation points; ask again
                    continue
                if not result.StatusCode.is_good():
                    continue  # the node vanished or hides its children: nothing below it
                references[i].extend(result.References)
                if result.ContinuationPoint:
                    continuations[i] = result.ContinuationPoint
            await _browse_rest(client, continuations, references)
        if retry and len(retry) == len(pending):
            raise EdgeGwError(
                "the server has no browse continuation points left for this session; "
                "try again later or browse a smaller subtree with --under"
            )
        pending = retry
        batch = max(1, batch // 2)
    return references


def _browse_description(node_id: ua.NodeId) -> ua.BrowseDescription:
    return ua.BrowseDescription(
        NodeId=node_id,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=_HIERARCHICAL,
        IncludeSubtypes=True,
        NodeClassMask=ua.NodeClass.Object | ua.NodeClass.Variable,
        ResultMask=ua.BrowseResultMask.ReferenceTypeId
        | ua.BrowseResultMask.IsForward
        | ua.BrowseResultMask.NodeClass
        | ua.BrowseResultMask.BrowseName,
    )


async def _browse(
    client: Client, descriptions: list[ua.BrowseDescription]
) -> list[ua.BrowseResult]:
    params = ua.BrowseParameters(RequestedMaxReferencesPerNode=0, NodesToBrowse=descriptions)
    return await client.uaclient.browse(params)


async def _browse_rest(
    client: Client,
    continuations: dict[int, bytes],
    references: list[list[ua.ReferenceDescription]],
) -> None:
    """Follow continuation points until every node of the batch has all its references."""
    while continuations:
        owners = list(continuations)
        params = ua.BrowseNextParameters(
            ReleaseContinuationPoints=False,
            ContinuationPoints=[continuations[i] for i in owners],
        )
        results = await client.uaclient.browse_next(params)
        continuations = {}
        for i, result in zip(owners, results, strict=True):
            if not result.StatusCode.is_good():
                continue  # the point expired: keep what we have rather than loop forever
            references[i].extend(result.References)
            if result.ContinuationPoint:
                continuations[i] = result.ContinuationPoint


# --- attributes of the variables ------------------------------------------------------------


async def _describe(
    client: Client, found: list[_Found], namespaces: Sequence[str], limits: dict[str, int]
) -> list[BrowsedVariable]:
    reads: list[tuple[ua.NodeId, AttributeIds]] = []
    for variable in found:
        reads += [
            (variable.node_id, AttributeIds.DataType),
            (variable.node_id, AttributeIds.AccessLevel),
            (variable.node_id, AttributeIds.UserAccessLevel),
        ]
    values = await _read(client, reads, limits["read"])
    type_ids: list[ua.NodeId | None] = []
    readable: list[bool] = []
    for k in range(len(found)):
        data_type, access, user_access = values[3 * k : 3 * k + 3]
        type_id = _good_value(data_type)
        type_ids.append(type_id if isinstance(type_id, ua.NodeId) else None)
        readable.append(_can_read(_good_value(access), _good_value(user_access)))
    type_names = await _data_type_names(client, {t for t in type_ids if t is not None}, limits)
    units = await _engineering_units(
        client, [v.node_id for v, ok in zip(found, readable, strict=True) if ok], limits
    )
    return [
        BrowsedVariable(
            node_id=format_node_id(variable.node_id, namespaces),
            path=variable.path,
            data_type=type_names.get(type_id) if type_id is not None else None,
            unit=units.get(variable.node_id),
            readable=ok,
        )
        for variable, type_id, ok in zip(found, type_ids, readable, strict=True)
    ]


def _can_read(access: object, user_access: object) -> bool:
    # An attribute the server does not return tells nothing: assume readable, as almost every
    # variable is, rather than hide a tag the user may well be able to read.
    if isinstance(access, int) and not access & _CURRENT_READ:
        return False
    return not (isinstance(user_access, int) and not user_access & _CURRENT_READ)


async def _data_type_names(
    client: Client, type_ids: set[ua.NodeId], limits: dict[str, int]
) -> dict[ua.NodeId, str]:
    """Names of data types: the standard name, or `Name (StandardBase)` for a vendor type."""
    names: dict[ua.NodeId, str] = {}
    vendor: list[ua.NodeId] = []
    for type_id in type_ids:
        standard = _standard_name(type_id)
        if standard is None:
            vendor.append(type_id)
        else:
            names[type_id] = standard
    if not vendor:
        return names
    browse_names = await _read(
        client, [(t, AttributeIds.BrowseName) for t in vendor], limits["read"]
    )
    bases = await _standard_supertypes(client, vendor, limits["browse"])
    for type_id, browse_name in zip(vendor, browse_names, strict=True):
        qualified = _good_value(browse_name)
        name = qualified.Name if isinstance(qualified, ua.QualifiedName) else None
        base = bases.get(type_id)
        if name and base:
            names[type_id] = f"{name} ({base})"
        else:
            names[type_id] = name or base or _identifier_part(type_id)
    return names


def _standard_name(type_id: ua.NodeId) -> str | None:
    """The name of a data type of the standard namespace; None for a vendor type."""
    identifier = type_id.Identifier
    if type_id.NamespaceIndex != 0 or not isinstance(identifier, int):
        return None
    return str(ObjectIdNames.get(identifier, f"i={identifier}"))


async def _standard_supertypes(
    client: Client, vendor_types: list[ua.NodeId], batch: int
) -> dict[ua.NodeId, str]:
    """For each vendor type, the first standard type up its HasSubtype chain."""
    current = {t: t for t in vendor_types}  # vendor type -> the ancestor reached so far
    result: dict[ua.NodeId, str] = {}
    for _hop in range(_MAX_TYPE_ANCESTRY):
        if not current:
            break
        ancestors = sorted(set(current.values()), key=_identifier_part)
        descriptions = [
            ua.BrowseDescription(
                NodeId=a,
                BrowseDirection=ua.BrowseDirection.Inverse,
                ReferenceTypeId=_HAS_SUBTYPE,
                IncludeSubtypes=False,
                ResultMask=ua.BrowseResultMask.BrowseName,
            )
            for a in ancestors
        ]
        results = await _call_adaptive_batched(
            descriptions, batch, lambda part: _browse(client, part)
        )
        parent_of: dict[ua.NodeId, ua.NodeId] = {}
        for ancestor, browsed in zip(ancestors, results, strict=True):
            if browsed.StatusCode.is_good() and browsed.References:
                supertype = browsed.References[0].NodeId
                parent_of[ancestor] = _node_id(supertype.Identifier, supertype.NamespaceIndex)
        advanced: dict[ua.NodeId, ua.NodeId] = {}
        for vendor, ancestor in current.items():
            parent = parent_of.get(ancestor)
            if parent is None:
                continue
            standard = _standard_name(parent)
            if standard is not None:
                result[vendor] = standard
            else:
                advanced[vendor] = parent
        current = advanced
    return result


async def _engineering_units(
    client: Client, variables: list[ua.NodeId], limits: dict[str, int]
) -> dict[ua.NodeId, str]:
    """The EngineeringUnits display name of each variable that has the property."""
    if not variables:
        return {}
    paths = [
        ua.BrowsePath(
            StartingNode=v,
            RelativePath=ua.RelativePath(
                Elements=[
                    ua.RelativePathElement(
                        ReferenceTypeId=_HAS_PROPERTY,
                        IsInverse=False,  # type: ignore[arg-type]  # a marker class, really bool
                        IncludeSubtypes=True,  # type: ignore[arg-type]
                        TargetName=ua.QualifiedName("EngineeringUnits", 0),
                    )
                ]
            ),
        )
        for v in variables
    ]
    results = await _call_adaptive_batched(
        paths, limits["translate"], client.uaclient.translate_browsepaths_to_nodeids
    )
    properties: dict[ua.NodeId, ua.NodeId] = {}
    for variable, result in zip(variables, results, strict=True):
        if result.StatusCode.is_good() and result.Targets:
            target = result.Targets[0].TargetId
            properties[variable] = _node_id(target.Identifier, target.NamespaceIndex)
    owners = list(properties)
    values = await _read(
        client, [(properties[v], AttributeIds.Value) for v in owners], limits["read"]
    )
    units: dict[ua.NodeId, str] = {}
    for variable, value in zip(owners, values, strict=True):
        info = _good_value(value)
        if isinstance(info, ua.EUInformation) and info.DisplayName.Text:
            units[variable] = info.DisplayName.Text
    return units


# --- batching -------------------------------------------------------------------------------


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


async def _call_adaptive(
    items: Sequence[_T], call: Callable[[list[_T]], Awaitable[list[_R]]]
) -> list[_R]:
    """`call(items)`, split in halves while the server answers BadTooManyOperations.

    Some servers enforce a lower limit than they advertise, or advertise none at all.
    """
    try:
        return await call(list(items))
    except BadTooManyOperations:
        if len(items) <= 1:
            raise
    middle = len(items) // 2
    return [
        *await _call_adaptive(items[:middle], call),
        *await _call_adaptive(items[middle:], call),
    ]


async def _call_adaptive_batched(
    items: Sequence[_T], batch: int, call: Callable[[list[_T]], Awaitable[list[_R]]]
) -> list[_R]:
    results: list[_R] = []
    for chunk in _chunks(items, batch):
        results += await _call_adaptive(chunk, call)
    return results


async def _read(
    client: Client, reads: Sequence[tuple[ua.NodeId, AttributeIds]], batch: int
) -> list[ua.DataValue]:
    """One Read per batch of (node, attribute) pairs; no timestamps, they are not needed."""

    async def read_part(part: list[tuple[ua.NodeId, AttributeIds]]) -> list[ua.DataValue]:
        params = ua.ReadParameters(
            TimestampsToReturn=ua.TimestampsToReturn.Neither,
            NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=a) for n, a in part],
        )
        return await client.uaclient.read(params)

    return await _call_adaptive_batched(reads, batch, read_part)


def _good_value(value: ua.DataValue) -> object:
    """The value of a good DataValue, None for a bad or empty one."""
    if value.StatusCode is not None and not value.StatusCode.is_good():
        return None
    return value.Value.Value if value.Value is not None else None


# --- tag names ------------------------------------------------------------------------------

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_UNDERSCORES = re.compile(r"_{2,}")


def tag_name_for(path: Sequence[str]) -> str:
    """A valid tag name (`^[A-Za-z0-9_][A-Za-z0-9_-]*$`, at most 64 chars) from a browse path.

    Accents are dropped (Ölpumpe -> Olpumpe), other characters become '_'. A name too long
    keeps its end: siblings differ in their leaf name, not in the folders above them.
    """
    text = unicodedata.normalize("NFKD", "_".join(path))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _UNDERSCORES.sub("_", _NOT_IN_NAME.sub("_", text)).strip("_").lstrip("-")
    if len(text) > MAX_TAG_NAME:
        cut = text[-MAX_TAG_NAME:]
        if text[-MAX_TAG_NAME - 1] != "_" and "_" in cut:
            cut = cut[cut.index("_") + 1 :]  # start at a word boundary, not mid-word
        text = cut.lstrip("_-")
    return text or "tag"


def unique_tag_names(paths: Iterable[Sequence[str]]) -> list[str]:
    """`tag_name_for` of each path, the second and later of equal names suffixed `_2`, `_3`...

    A suffixed name never takes a name that another path produces by itself.
    """
    bases = [tag_name_for(p) for p in paths]
    reserved = set(bases)
    used: set[str] = set()
    names: list[str] = []
    for base in bases:
        name = base
        counter = 2
        while name in used or (name != base and name in reserved):
            suffix = f"_{counter}"
            name = base[: MAX_TAG_NAME - len(suffix)].rstrip("_-") + suffix
            counter += 1
        used.add(name)
        names.append(name)
    return names


# --- YAML -----------------------------------------------------------------------------------

_YAML_KEYWORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_COMMENT_COLUMN_MAX = 110  # align trailing comments, unless an entry is longer than this


def render_tags_yaml(variables: Sequence[BrowsedVariable]) -> str:
    """A `tags:` YAML block, one flow mapping per readable variable, type and unit as comment."""
    readable = [v for v in variables if v.readable]
    names = unique_tag_names(v.path for v in readable)
    entries: list[tuple[str, str]] = []
    for name, variable in zip(names, readable, strict=True):
        fields = f"name: {_yaml_name(name)}, node: {_yaml_quoted(variable.node_id)}"
        if variable.unit and len(variable.unit) <= MAX_UNIT:
            fields += f", unit: {_yaml_quoted(variable.unit)}"
        entries.append((f"  - {{{fields}}}", _comment_text(variable)))
    width = max(
        (len(entry) for entry, _ in entries if len(entry) <= _COMMENT_COLUMN_MAX), default=0
    )
    lines = ["tags:" if entries else "tags: []"]
    lines += [f"{entry.ljust(width)}   # {comment}" for entry, comment in entries]
    for variable in variables:
        if not variable.readable:
            lines.append(
                f"  # skipped, not readable: {_comment_safe(variable.node_id)}"
                f" ({_comment_text(variable)})"
            )
    return "\n".join(lines) + "\n"


def _comment_text(variable: BrowsedVariable) -> str:
    parts = [variable.data_type or "unknown type"]
    if variable.unit:
        parts.append(variable.unit)
    return _comment_safe(", ".join(parts))


def _comment_safe(text: str) -> str:
    """Text that cannot end a YAML comment early: line breaks and unprintables become spaces."""
    return "".join(c if _yaml_printable(c) else " " for c in text)


def _yaml_name(name: str) -> str:
    """A tag name plain when YAML reads it back as that string, quoted otherwise (e.g. `123`)."""
    if (name[0].isalpha() or name[0] == "_") and name.lower() not in _YAML_KEYWORDS:
        return name
    return _yaml_quoted(name)


def _yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar that reads back as exactly `text`.

    Not json.dumps: JSON leaves U+2028/U+2029 and the C1 controls raw; YAML folds the first
    two as line breaks and refuses the others anywhere in the document.
    """
    out = ['"']
    for c in text:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif _yaml_printable(c):
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


def _yaml_printable(c: str) -> bool:
    """Safe to write as is: YAML 1.1 printable (what PyYAML accepts) minus line breaks and tab.

    NEL (U+0085) and U+2028/U+2029 are printable to YAML but break lines, so they are left out.
    """
    code = ord(c)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0x2027
        or 0x202A <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )
