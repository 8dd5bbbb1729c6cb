"""Load YAML into plain Python data and remember where every value was written.

PyYAML's `compose` gives nodes that carry their start marks; the plain data (dict, list,
str, int, float, bool, None) is built here from those nodes, so that each value's position
is recorded under its path (`("sources", 0, "tags", 1, "type")`, the root is `()`), and each
mapping entry's key position too. Scalars go through SafeLoader's own constructors, so
`7d`, `500ms` and `holding:100` stay strings, `1` is an int, `0.5` a float, `true` a bool.

Every problem PyYAML's parser lets through is collected before anything is reported:
duplicate keys (all of them, in every mapping), keys that are neither text nor integers,
unsupported tags, recursive aliases. A syntax error stops the parser, so it is reported
alone; the common ones (a tab, a line one space off, a list item among keys, a ': ' inside
an unquoted value, a missing ':', an unclosed quote) in plain words that say what to change,
not in PyYAML's parser vocabulary ("expected <block end>, but found '<block mapping
start>'"). Each problem is one `ConfigError` line, `FILE:LINE:COL path: message`, counted from 1,
and the list ends with the summary line.

Differences from SafeLoader, on purpose:

- Merge keys (`<<: *defaults`, `<<: [*a, *b]`) are supported with YAML 1.1 semantics: keys
  written in the mapping win over merged ones, and an earlier merge source wins over a later
  one. A merged value keeps the position where it was written (in the anchored mapping), so
  an error in it points at the text that has to change.
- Timestamps (`2024-05-01`) stay strings: the config has no date fields, and a `datetime`
  would only turn into a confusing type error.
- `!!binary`, `!!set`, `!!omap`, `!!pairs` and custom tags such as `!env` are refused.
- Aliases may not expand to more than `MAX_NODES` values (the "billion laughs" bomb).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgegw.config.issues import ConfigIssue, Mark
from edgegw.errors import ConfigError

Path = tuple[str | int, ...]

MAX_NODES = 100_000
"""Values a document may expand to through aliases before it is refused."""

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null"))
_TIMESTAMP = _TAG + "timestamp"

# PyYAML's parser names tokens like '<block end>'; say what they mean in a config file.
_TOKEN_WORDS = {
    "'<block end>'": "the end of an indented block",
    "<block end>": "the end of an indented block",
    "'<block mapping start>'": "the start of a new 'key: value' block",
    "<block mapping start>": "the start of a new 'key: value' block",
    "'<block sequence start>'": "the start of a list ('- ...')",
    "'<block sequence entry>'": "a list item ('- ...')",
    "<block sequence entry>": "a list item ('- ...')",
    "'<stream end>'": "the end of the file",
    "<stream end>": "the end of the file",
    "'<document start>'": "'---'",
    "<document start>": "'---'",
    "'<scalar>'": "a value",
    "<scalar>": "a value",
}


@dataclass(slots=True)
class YamlDocument:
    """One loaded YAML file: the plain data and where each piece of it was written."""

    path: str
    """The file name as the user gave it: printed in every error."""
    data: Any
    """Plain dict/list/str/int/float/bool/None."""
    value_marks: dict[Path, Mark] = field(default_factory=dict)
    """Position of the value at each path; the root is `()`."""
    key_marks: dict[Path, Mark] = field(default_factory=dict)
    """Position of the key of each mapping entry; the path ends with that key."""


def load_yaml_file(path: str | os.PathLike[str]) -> YamlDocument:
    """Read and load a YAML file; ConfigError if it cannot be read or is not valid YAML."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(name, None, "", f"cannot read the file: {reason}")]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1].hex()
        message = f"the file is not UTF-8 text (byte 0x{bad} on line {line})"
        raise ConfigError([ConfigIssue(name, None, "", message)]) from None
    return load_yaml_text(text, name)


def load_yaml_text(text: str, path: str = "<string>") -> YamlDocument:
    """Load YAML text; `path` is only used in messages. ConfigError lists every problem."""
    try:
        root = _compose_single(text, path)
        if root is not None and not (
            isinstance(root, ScalarNode) and root.tag == _TAG + "null" and root.value == ""
        ):
            builder = _Builder(path)
            data = builder.build(root, ())
    except RecursionError:
        # PyYAML and the builder recurse per level: hundreds of nested levels exhaust the
        # stack. No real config nests more than a dozen.
        message = "the file nests lists or mappings too deeply to be a configuration"
        issue = ConfigIssue(path, Mark(1, 1), "", message)
        raise ConfigError([issue]) from None
    if root is None or (
        isinstance(root, ScalarNode) and root.tag == _TAG + "null" and root.value == ""
    ):
        raise ConfigError([ConfigIssue(path, None, "", "file is empty")])
    if builder.problems:
        raise ConfigError(sorted(builder.problems, key=lambda issue: issue.position))
    return YamlDocument(path, data, builder.value_marks, builder.key_marks)


def _compose_single(text: str, path: str) -> Node | None:
    try:
        yaml.reader.Reader(text)  # refuses control characters, with their position
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_issue(path, text, exc)]) from None
    if yaml.__with_libyaml__ and "\t" not in text:
        # libyaml's parser composes the same nodes (same marks) at a third of the time and
        # about 60 % of the peak memory: 10,000 tags took 1.0 s and left the daemon 17 MB
        # smaller than the pure-Python parser (2.8 s). Whatever it refuses is parsed again by
        # the pure-Python one, whose errors the messages below are written for. A tab sends
        # the text there at once: libyaml accepts some tabs that PyYAML refuses (`id:<tab>x`),
        # and the config says so rather than depend on the parser installed.
        fast = yaml.CSafeLoader(text)
        try:
            return fast.get_single_node()
        except yaml.YAMLError:
            pass
        finally:
            fast.dispose()
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        if exc.context == "expected a single document in the stream" and exc.problem_mark:
            message = (
                "a second YAML document starts here; a config file holds exactly one "
                "(remove this '---' and what follows, or merge it into the first)"
            )
            issue = ConfigIssue(path, _mark(exc.problem_mark), "", message)
        else:
            issue = _syntax_issue(path, exc, text)
        raise ConfigError([issue]) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_issue(path, text, exc)]) from None
    finally:
        loader.dispose()


def _clip(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "…"


def _mark(mark: yaml.Mark) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)


def _short_tag(tag: str) -> str:
    """'tag:yaml.org,2002:binary' -> '!!binary', as it was written."""
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


_PHRASES = {
    "found unexpected end of stream": "the file ends too early",
    "while scanning a quoted scalar": "inside a quoted value",
    "while scanning a simple key": "while reading a key",
    "while scanning": "while reading",
    "while parsing": "while reading",
    "flow sequence": "[...] list",
    "flow mapping": "{...} mapping",
    "block mapping": "indented mapping",
    "block collection": "indented block",
    "block sequence": "indented list",
    "plain scalar": "value",
    "scalar": "value",
}
"""PyYAML's parser vocabulary, in the words of someone editing a config file."""


def _plain(text: str) -> str:
    for token, words in _TOKEN_WORDS.items():
        text = text.replace(token, words)
    for phrase, words in _PHRASES.items():
        text = text.replace(phrase, words)
    return text.replace(" a indented", " an indented")


def _syntax_issue(path: str, exc: yaml.MarkedYAMLError, text: str = "") -> ConfigIssue:
    """One line for a PyYAML parse error: where, what, and what it was in the middle of."""
    words = _in_plain_words(exc, _lines(text))
    if words is not None:
        return ConfigIssue(path, words[0], "", words[1])
    problem = exc.problem or "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    undefined = re.fullmatch(r"found undefined alias '(.*)'", problem)
    if undefined:
        name = undefined.group(1)
        message = f"unknown alias '*{name}'; define it with '&{name}' before this point"
    else:
        message = _plain(problem)
        if exc.context and exc.context_mark is not None:
            context = _plain(exc.context)
            same_place = exc.problem_mark is not None and (
                exc.context_mark.line == exc.problem_mark.line
            )
            where = "" if same_place else f" started on line {exc.context_mark.line + 1}"
            message += f" ({context}{where})"
        if "mapping values are not allowed" in problem:
            message += "; a ':' inside a value needs quotes, or the indentation is off"
        elif "expected the end of an indented block" in message:
            message += "; check the indentation"
        elif exc.context in ("while parsing a flow sequence", "while parsing a flow mapping"):
            if problem.endswith("'<scalar>'"):
                message += "; is a ',' missing between two values?"
            else:
                closing = "]" if "sequence" in exc.context else "}"
                message += f"; is a closing '{closing}' missing?"
    return ConfigIssue(path, None if mark is None else _mark(mark), "", message)


# --- the common YAML mistakes, in the words of someone editing a config file -------------

_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_COLON_GAP = "a ':' followed by a space"
_QUOTES = ('"', "'")


def _lines(text: str) -> list[str]:
    """The file's lines, split where PyYAML counts a new line."""
    return _LINE_BREAK.split(text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _key_column(line: str) -> int:
    """Where a line's key starts: after its indentation and any '- ' list markers."""
    column = _indent(line)
    while line.startswith("- ", column):
        column += 1
        while line.startswith(" ", column):
            column += 1
    return column


def _is_content(line: str) -> bool:
    stripped = line.strip(" ")
    return bool(stripped) and not stripped.startswith("#")


def _previous_content(lines: list[str], row: int) -> int | None:
    for above in range(min(row, len(lines)) - 1, -1, -1):
        if _is_content(lines[above]):
            return above
    return None


def _levels_above(lines: list[str], row: int) -> list[int]:
    """The indentations a line could line up with: those of the blocks still open above it."""
    levels: set[int] = set()
    smallest: int | None = None
    above = _previous_content(lines, row)
    while above is not None:
        line = lines[above]
        if smallest is None or _indent(line) < smallest:
            smallest = _indent(line)
            levels.update((smallest, _key_column(line)))
            if smallest == 0:
                break
        above = _previous_content(lines, above)
    return sorted(levels)


def _spaces(count: int) -> str:
    return "1 space" if count == 1 else f"{count} spaces"


def _one_of(numbers: list[int]) -> str:
    words = [str(number) for number in numbers]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _in_plain_words(exc: yaml.MarkedYAMLError, lines: list[str]) -> tuple[Mark, str] | None:
    """(where, message) for the mistakes people make most, or None for PyYAML's own words.

    Tabs, a ':' inside an unquoted value, a line indented one space off, a list item among
    keys, a missing ':' or a missing space after it, an unclosed quote, text after a closing
    quote, and a value starting with a character YAML reserves.
    """
    problem, context = exc.problem or "", exc.context or ""
    at, start = exc.problem_mark, exc.context_mark
    if at is None or at.line >= len(lines):
        return None
    line = lines[at.line]
    before = line[: at.column]
    here = _mark(at)
    if problem.endswith("that cannot start any token") and at.column < len(line):
        char = line[at.column]
        if char == "\t":
            if not before.strip(" "):
                return here, "a tab character cannot be used for indentation in YAML; use spaces"
            return here, "a tab character cannot separate values in YAML; use spaces"
        return here, f"a value cannot start with {char!r} in YAML; put the value in quotes"
    if problem == "mapping values are not allowed here":
        return _colon_in_value(lines, at.line, at.column)
    scalar_next = problem.endswith(("but found '<scalar>'", "but got '<scalar>'"))
    if scalar_next and before.rstrip(" ").endswith(_QUOTES):
        return here, "text follows the closing quote; put all of the value inside the quotes"
    if problem.startswith("expected '<document start>'") and not before.strip(" "):
        return _misindented(lines, at, at, "", in_list=False)  # the first lines were indented
    if start is None or start.line >= len(lines):
        return None
    found = re.fullmatch(r"expected <block end>, but found (.*)", problem)
    if found and found.group(1) == "':'" and not before.strip(" "):
        return here, "this line starts with ':'; the key before it is missing ('key: value')"
    if found and context.startswith("while parsing a block") and not before.strip(" "):
        return _misindented(lines, at, start, found.group(1), in_list="collection" in context)
    if problem == "could not find expected ':'" and context == "while scanning a simple key":
        key = lines[start.line][start.column :].rstrip(" ")
        glued = re.fullmatch(r"([^\s:#]+):(\S[^#]*?)", key)
        if glued:
            fixed = f"{glued.group(1)}: {glued.group(2)}"
            return _mark(start), f"a key needs {_COLON_GAP} before its value: {fixed}"
        return _mark(start), "this line has no ':'; a line in a mapping is 'key: value'"
    if context == "while scanning a quoted scalar" and problem == "found unexpected end of stream":
        opening = lines[start.line][start.column : start.column + 1] or "'"
        return _mark(start), (
            f"the quote {opening} that opens this value is never closed; add the closing "
            f"{opening} (the file ends before one)"
        )
    if context in ("while scanning an alias", "while scanning an anchor"):
        sign, what = ("*", "an alias (*name)") if "alias" in context else ("&", "an anchor (&name)")
        return _mark(start), (
            f"'{sign}' starts {what} in YAML; put a value that starts with '{sign}' in quotes"
        )
    return None


def _colon_in_value(lines: list[str], row: int, column: int) -> tuple[Mark, str]:
    """`mapping values are not allowed here`: a ': ' where the line is already a value."""
    line = lines[row]
    here = Mark(row + 1, column + 1)
    content = _key_column(line)
    first = line.find(": ", content)
    if 0 <= first < column and line[content : content + 1] not in ("{", "["):
        key, value = line[content:first], line[first + 2 :].strip(" ")
        message = f"{_COLON_GAP} starts a mapping inside a value; put the value in quotes"
        if '"' not in value and "#" not in value:
            message += f': {key}: "{value}"'
        return here, message
    above = _previous_content(lines, row)
    if above is not None:
        previous = lines[above]
        if not re.search(r":( |$)", previous) and _indent(previous) == _indent(line):
            return Mark(above + 1, _indent(previous) + 1), (
                "this line has no ':'; a line in a mapping is 'key: value'"
            )
        keys = _key_column(previous)
        if _indent(line) > keys:
            return here, (
                f"this line is indented more than the line above (line {above + 1}), so it "
                f"reads as more of that line's value; indent it by {_spaces(keys)} like the "
                "keys above, or put a value that contains ': ' in quotes"
            )
    return here, (
        "a ':' here starts a mapping inside a value: is this line indented too far, or is a "
        "value missing quotes?"
    )


def _misindented(
    lines: list[str], at: yaml.Mark, start: yaml.Mark, found: str, *, in_list: bool
) -> tuple[Mark, str] | None:
    """`expected <block end>, but found ...`: a line that fits no block open above it."""
    here, opened = _mark(at), start.line + 1
    is_item = found in ("'-'", "'<block sequence start>'")
    if at.column == start.column and is_item and not in_list:
        return here, (
            f"a list item ('- ...') among the 'key: value' lines of the mapping started on line "
            f"{opened}; write it as 'key: value', or put the list under a key that ends with ':'"
        )
    if at.column == start.column and not is_item and in_list:
        keys = _key_column(lines[start.line])
        return here, (
            f"a 'key: value' line among the items ('- ...') of the list started on line "
            f"{opened}; if it belongs to the item above, indent it by {_spaces(keys)} like "
            "that item's keys; if it starts a new item, begin it with '- '"
        )
    levels = _levels_above(lines, at.line)
    if not levels or at.column in levels:
        return None  # it lines up with something: PyYAML's own words, with 'check the indentation'
    unit = "space" if levels == [1] else "spaces"
    return here, (
        f"this line is indented by {_spaces(at.column)}, which lines up with no block above it "
        f"(those are indented by {_one_of(levels)} {unit}); indent it like the other lines of "
        "its block, with spaces"
    )


def _reader_issue(path: str, text: str, exc: yaml.reader.ReaderError) -> ConfigIssue:
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    character = exc.character if isinstance(exc.character, str) else chr(exc.character)
    message = f"the character {character!r} is not allowed in a YAML file"
    return ConfigIssue(path, Mark(line, column), "", message)


class _Builder:
    """Turns a composed node tree into plain data, recording marks and problems."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value_marks: dict[Path, Mark] = {}
        self.key_marks: dict[Path, Mark] = {}
        self.problems: list[ConfigIssue] = []
        self._reported: set[tuple[Mark, str]] = set()  # a node reached twice via aliases
        self._constructor = SafeConstructor()
        self._active: set[int] = set()  # ids of the collections being built: alias loops
        self._count = 0
        self._list_items: set[Path] = set()  # paths that end with a list index
        self._too_many = False

    def problem(self, node: Node, path: Path, message: str) -> None:
        mark = _mark(node.start_mark)
        if (mark, message) in self._reported:
            return
        self._reported.add((mark, message))
        self.problems.append(ConfigIssue(self.path, mark, self._render(path), message))

    def _render(self, path: Path) -> str:
        """`sources[0].tags`: list items as indices, mapping keys (integers too) dotted."""
        text = ""
        for end in range(1, len(path) + 1):
            part = path[end - 1]
            if path[:end] in self._list_items:
                text += f"[{part}]"
            else:
                text += f".{part}" if text else str(part)
        return text

    def build(self, node: Node, path: Path) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            if not self._too_many:
                self._too_many = True
                self.problem(
                    node,
                    path,
                    f"the aliases (*name) in this file expand to more than {MAX_NODES} values; "
                    "refusing to load it",
                )
            return None
        self.value_marks[path] = _mark(node.start_mark)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self.problem(node, path, "an alias refers to a collection that contains it (a loop)")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    self.problem(
                        node, path, f"unsupported YAML tag '{_short_tag(node.tag)}' on a list"
                    )
                items = []
                for index, item in enumerate(node.value):
                    self._list_items.add((*path, index))
                    items.append(self.build(item, (*path, index)))
                return items
            if isinstance(node, MappingNode):
                if node.tag != _MAP:
                    self.problem(
                        node, path, f"unsupported YAML tag '{_short_tag(node.tag)}' on a mapping"
                    )
                return self._mapping(node, path)
            self.problem(node, path, f"unexpected YAML node {type(node).__name__}")
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        if node.tag == _TIMESTAMP:
            return str(node.value)
        if node.tag not in _SCALAR_TAGS:
            self.problem(
                node,
                path,
                f"unsupported YAML tag '{_short_tag(node.tag)}'; write a plain value instead",
            )
            return None
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, IndexError):  # `!!int abc`, `!!int ""`
            self.problem(node, path, f"cannot read {_clip(node.value)} as {_short_tag(node.tag)}")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
            # Python refuses to print integers of more than 4,300 digits; none is meaningful.
            self.problem(node, path, f"the number {_clip(node.value)} is far too large")
            return None
        return value

    def _key(self, node: Node, path: Path) -> str | int | None:
        """The key as plain data; None (after recording a problem) if it cannot be one."""
        if not isinstance(node, ScalarNode) or node.tag not in _SCALAR_TAGS:
            self.problem(node, path, "a mapping key must be a plain word or number")
            return None
        try:
            key = self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, IndexError):  # `!!int abc:`
            self.problem(node, path, f"cannot read the key {_clip(node.value)}")
            return None
        if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() > 128:
            self.problem(node, path, f"the key {_clip(node.value)} is far too large a number")
            return None
        if isinstance(key, str | int):  # bool is an int: `yes:`/`on:` keys, as YAML 1.1 has it
            return key
        self.problem(
            node, path, f"a mapping key must be text or an integer (got {node.value!r}); quote it"
        )
        return None

    def _entries(self, node: MappingNode, path: Path) -> list[tuple[str | int, Node, Node]]:
        """The (key, key node, value node) of a mapping, merges flattened, duplicates reported."""
        # Merges nest like aliases do (`<<: [*a, *a]` on every level doubles the work): they
        # count against the same limit.
        self._count += len(node.value)
        if self._count > MAX_NODES:
            if not self._too_many:
                self._too_many = True
                self.problem(
                    node,
                    path,
                    f"the merges (<<) and aliases in this file expand to more than {MAX_NODES} "
                    "values; refusing to load it",
                )
            return []
        own: list[tuple[str | int, Node, Node]] = []
        first_seen: dict[str | int, Node] = {}
        merge: tuple[Node, Node] | None = None
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                if merge is not None:
                    first = _mark(merge[0].start_mark).line
                    self.problem(
                        key_node, path, f"duplicate key '<<' (first defined at line {first})"
                    )
                else:
                    merge = (key_node, value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in first_seen:
                earlier = first_seen[key]
                where = f"line {_mark(earlier.start_mark).line}"
                if isinstance(earlier, ScalarNode) and earlier.value != key_node.value:
                    where += f" as '{earlier.value}'"  # `on:` then `1:` (both are 1 in YAML 1.1)
                self.problem(
                    key_node, (*path, key), f"duplicate key '{key}' (first defined at {where})"
                )
                continue
            first_seen[key] = key_node
            own.append((key, key_node, value_node))
        if merge is None:
            return own
        # Keys written here win; then each merge source in order, the first one winning.
        merged = list(own)
        present = set(first_seen)
        for source in self._merge_sources(merge, path):
            if id(source) in self._active:
                self.problem(source, path, "'<<' (merge) refers to a mapping that contains it")
                continue
            self._active.add(id(source))
            try:
                entries = self._entries(source, path)
            finally:
                self._active.discard(id(source))
            for key, key_node, value_node in entries:
                if key not in present:
                    present.add(key)
                    merged.append((key, key_node, value_node))
        return merged

    def _merge_sources(self, merge: tuple[Node, Node], path: Path) -> list[MappingNode]:
        key, value = merge
        if isinstance(value, MappingNode):
            return [value]
        if isinstance(value, SequenceNode) and all(
            isinstance(item, MappingNode) for item in value.value
        ):
            return list(value.value)
        self.problem(
            key,
            path,
            "'<<' (merge) needs a mapping or a list of mappings, e.g. '<<: *defaults' "
            "or '<<: [*a, *b]'",
        )
        return []

    def _mapping(self, node: MappingNode, path: Path) -> dict[str | int, Any]:
        result: dict[str | int, Any] = {}
        for key, key_node, value_node in self._entries(node, path):
            self.key_marks[(*path, key)] = _mark(key_node.start_mark)
            result[key] = self.build(value_node, (*path, key))
        return result
