"""Node ids as written in the config: `ns=2;s=Filler.Speed` or `nsu=urn:plc;i=1042`.

A namespace *index* is only a position in the server's namespace array and may change when
the server restarts (it registers its namespaces in another order); a namespace *URI* is
stable. `nsu=` references are therefore kept as URIs and resolved after every connect.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from asyncua import ua

IdKind = Literal["i", "s", "g", "b"]

_NODE = re.compile(r"^(?:ns=(?P<ns>\d+);|nsu=(?P<nsu>.+?);)?(?P<kind>[isgb])=(?P<id>.*)$", re.S)
_MAX_NUMERIC = 2**32 - 1
_MAX_NAMESPACE = 2**16 - 1


class NamespaceMissing(LookupError):
    """The server's namespace array has no entry for a `nsu=` URI."""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node id; `namespace_uri` is set for `nsu=`, `namespace_index` for `ns=`."""

    text: str
    kind: IdKind
    identifier: int | str | uuid.UUID | bytes
    namespace_index: int = 0
    namespace_uri: str | None = None

    def __str__(self) -> str:
        return self.text

    def resolve(self, namespaces: list[str]) -> ua.NodeId:
        """The NodeId on a server whose namespace array is `namespaces`."""
        index = self.namespace_index
        if self.namespace_uri is not None:
            try:
                index = namespaces.index(self.namespace_uri)
            except ValueError:
                raise NamespaceMissing(
                    f"namespace {self.namespace_uri} is not in the server's namespace array"
                ) from None
        # Imported here: the config loads this module, and a gateway with no OPC UA source
        # should not carry asyncua (about 30 MB of RSS).
        from asyncua import ua

        id_type = getattr(ua.NodeIdType, _NODE_ID_TYPES[self.kind])
        # asyncua annotates with its wire-type aliases (ua.Int16...), plain ints are what it takes.
        return ua.NodeId(self.identifier, index, id_type)  # type: ignore[arg-type]


_NODE_ID_TYPES = {"i": "Numeric", "s": "String", "g": "Guid", "b": "ByteString"}


def parse_node_ref(value: Any) -> NodeRef:
    """Parse a node id string; ValueError says what is wrong and what would be valid."""
    if isinstance(value, NodeRef):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a node id such as 'ns=2;s=Line.Speed', got {value!r}")
    match = _NODE.match(value.strip())
    if match is None:
        raise ValueError(
            f"'{value}' is not a node id; write 'ns=<index>;<id>' or 'nsu=<namespace uri>;<id>' "
            "where <id> is i=<number>, s=<string>, g=<guid> or b=<base64>"
        )
    kind: IdKind = match["kind"]  # type: ignore[assignment]
    raw = match["id"]
    namespace_index = int(match["ns"]) if match["ns"] is not None else 0
    if namespace_index > _MAX_NAMESPACE:
        raise ValueError(f"namespace index {namespace_index} is above {_MAX_NAMESPACE}")
    return NodeRef(
        text=value.strip(),
        kind=kind,
        identifier=_identifier(kind, raw, value),
        namespace_index=namespace_index,
        namespace_uri=match["nsu"],
    )


def _identifier(kind: IdKind, raw: str, value: str) -> int | str | uuid.UUID | bytes:
    if kind == "i":
        if not raw.isdigit() or int(raw) > _MAX_NUMERIC:
            raise ValueError(f"'{value}': i= takes a number from 0 to {_MAX_NUMERIC}")
        return int(raw)
    if kind == "s":
        if not raw:
            raise ValueError(f"'{value}': s= needs a string identifier")
        return raw
    if kind == "g":
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise ValueError(
                f"'{value}': g= takes a GUID such as 09087e75-8e5e-499b-954f-f2a9603db28a"
            ) from None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"'{value}': b= takes base64 bytes") from None
