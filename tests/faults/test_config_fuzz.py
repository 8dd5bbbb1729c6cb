"""Hostile config files: `load_config` returns a GatewayConfig or raises ConfigError, nothing else.

The contract, for ANY file content and any `environ` mapping:

- the result is a `GatewayConfig`, or the exception is `ConfigError`;
- `ConfigError.lines()` is a non-empty list of strings: the last one is the summary
  `N error(s); gateway not started.` with N the number of the other lines; each other line is
  one line of text that starts with the file name as given, followed by a position
  (`:LINE:COL`, LINE within the file), a path, or both; only a whole-file problem (empty,
  unreadable, not UTF-8) has neither;
- loading is quick: every example runs under a finite hypothesis deadline.

Strategies:

1. arbitrary bytes; YAML token soup (anchors, aliases, `<<`, tags, `---`, tabs, NUL, BOM,
   exotic line breaks); generated flow-style documents with anchors, aliases (also loops),
   merge keys, duplicate keys and tagged scalars;
2. structure-aware mutations of the valid configs in the repository (tests/configs,
   tests/events, config/demo.yaml): values replaced by hostile ones of every type or by
   domain near-misses (durations, addresses, node ids, URLs, topics, `when:` expressions,
   regular expressions), keys dropped, renamed and added, entries duplicated, subtrees
   aliased or merged, random `events:`/`sequences:` sections; emitted as block or flow YAML;
   Events and sequences over real tags, which pass the model and reach the cross-entry checks,
   whose promise is checked as well: a loaded config names only tags (and states) it has;
3. `${VAR}` expansion with a generated environment (values containing `${`, and the \\udcXX
   that os.environ holds for a non-UTF-8 byte), plus the positive properties: references are
   filled in once, never re-expanded, `$${` is literal.

Then a fixed corpus: billion laughs (also under `sources:`), merge chains, alias and merge
loops, 100 documents, tabs, NUL, lone surrogates, python/custom/binary/set tags (never
executed), 10,000 duplicate keys, huge strings and numbers, a YAML 1.2 directive.

Bugs this file found in edgegw/config (and the validators it runs) keep their minimal
reproducers: FIXED ones as regression tests, open ones (KNOWN_BUGS) as strict xfails. The
property tests recognise an open bug's exception by its type and the code it comes from, count
it in the ledger row as `lost`, and go on; any other exception or contract breach fails the
test. When an open bug is fixed, its xfail turns red: move its entry to FIXED, and the property
tests stop tolerating it too.

EDGEGW_FUZZ_SCALE=N multiplies every example budget (default 1: the file runs in ~30 s).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import (
    HealthCheck,
    currently_in_test_context,
    event,
    example,
    given,
    note,
    settings,
)
from hypothesis import strategies as st

from edgegw.config.loader import load_config
from edgegw.config.model import GatewayConfig
from edgegw.errors import ConfigError
from tests.faults.conftest import _REPORT, FaultRow

REPO = Path(__file__).resolve().parents[2]
SCALE = max(1, int(os.environ.get("EDGEGW_FUZZ_SCALE", "1")))
FILE_NAME = "hostile config.yaml"  # a space in it: issues must start with the name as given


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=timedelta(seconds=3),  # a few ms is typical; generous for a busy 2-core box
        database=None,  # no .hypothesis/ directory in the repository
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- the contract --------------------------------------------------------------------------

_SUMMARY = re.compile(r"(\d+) errors?; gateway not started\.")
_POSITION = re.compile(r":(\d+):(\d+)")
_WHOLE_FILE = ("file is empty", "cannot read the file", "the file is not UTF-8 text")


@dataclass
class Ledger:
    """What the property tests ran, for the fault report row."""

    examples: Counter[str] = field(default_factory=Counter)
    configs: int = 0
    errors: int = 0
    known_bugs: Counter[str] = field(default_factory=Counter)


LEDGER = Ledger()


@dataclass(frozen=True)
class Bug:
    """A bug this file found: what was wrong, and the smallest files that show it."""

    summary: str
    reproducers: tuple[Callable[[], str], ...]
    recognise: Callable[[BaseException], bool] | None = None  # open bugs that raise
    slow: bool = False  # the reproducer loads, but took seconds (it must take < SLOW_LIMIT)
    fails_with: type[BaseException] = Exception  # open bugs: how their xfail fails, exactly


# Seconds, for files of at most 81 KB. The fixed code takes at most 0.25 s here (the merge bomb
# stopping at MAX_NODES), so a machine eight times slower passes; the quadratic bugs took 10 s
# and more here at these sizes, the merge bomb days.
SLOW_LIMIT = 2.0


def _frames(exc: BaseException) -> list[tuple[str, str]]:
    return [
        (Path(frame.filename).as_posix(), frame.name)
        for frame in traceback.extract_tb(exc.__traceback__)
    ]


def _through(exc: BaseException, path_part: str, function: str | None = None) -> bool:
    return any(
        path_part in path and (function is None or name == function) for path, name in _frames(exc)
    )


def _minimal(extra: str = "", source: str = "") -> str:
    """The smallest valid config (plus `extra` at the end, `source` keys in the source)."""
    return (
        "gateway: {id: gw1, site: s, area: a, line: l}\n"
        "sources:\n"
        "  - name: cell\n"
        "    protocol: modbus\n"
        "    url: tcp://127.0.0.1:502\n"
        f"{source}"
        "    tags: [{name: good, address: 'holding:1', type: uint16}]\n"
        f"{extra}"
    )


def _event_when(condition: str) -> str:
    return _minimal(
        "events:\n"
        "  - type: e\n"
        f"    trigger: {{when: '{condition}'}}\n"
        "    key: [good]\n"
        "    fields: {good: cell.good}\n"
    )


def _event_pattern(pattern: str) -> str:
    return _minimal(
        "events:\n"
        "  - type: e\n"
        "    trigger: {changes: cell.good}\n"
        "    key: [good]\n"
        "    fields: {good: cell.good}\n"
        f"    contract: {{good: {{type: str, pattern: '{pattern}'}}}}\n"
    )


def _merge_chain(length: int) -> str:
    """`m1: &m1 {<<: {k: 1}}`, `m2: &m2 {<<: *m1}`, ...: each merge reaches the one before."""
    lines = ["m1: &m1 {<<: {k: 1}}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(2, length + 1)]
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int) -> str:
    """`mN: &mN {<<: [*mN-1, *mN-1]}`: 2^levels merges from a few hundred bytes."""
    lines = ["m0: &m0 {k0: 0}"]
    lines += [
        f"m{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}], k{level}: 1}}"
        for level in range(1, levels + 1)
    ]
    return "\n".join(lines) + "\n"


# Found by this file, and fixed in edgegw while it was written: regression tests now. Summaries
# say what the loader did before the fix.
FIXED: dict[str, Bug] = {
    "tagged-key": Bug(
        "yamlpos._Builder._key constructed an explicitly tagged key (`!!int abc`, "
        "`!!bool maybe`) without catching the constructor's ValueError/KeyError",
        (lambda: "{!!int abc: x}\n", lambda: "{!!bool maybe: x}\n"),
    ),
    "empty-tagged-scalar": Bug(
        "`!!int`/`!!float` on an empty scalar: SafeConstructor indexes value[0] and raised "
        "IndexError, which _Builder._scalar and _key let through",
        (lambda: "!!int\n", lambda: "gateway: {id: !!float ''}\n", lambda: "{!!int : x}\n"),
    ),
    "huge-int-text": Bug(
        "an integer of more than 4300 decimal digits (a hex literal, which PyYAML converts "
        "without Python's digit limit) made repr()/str() raise ValueError in "
        "diagnostics._show, in f'unknown key {key}' and in path rendering",
        (
            lambda: "gateway: {id: 0x" + "f" * 3600 + "}\n",
            lambda: "? 0x" + "f" * 3600 + "\n: 1\n",  # an explicit key: no 1024-char limit
        ),
    ),
    "deep-nesting": Bug(
        "about 490 nested collections exhausted the stack in PyYAML's recursive "
        "scanner/composer and _Builder.build, as did ~1000 chained merge keys in "
        "_Builder._entries: RecursionError escaped load_yaml_text",
        (lambda: _merge_chain(1000),),  # nested collections: too-deep-without-position
    ),
    "deep-when": Bug(
        "a deeply nested `when:` (`not ` or `-` ~490 times) overflowed the recursive _Refs "
        "NodeTransformer and _check in events/expr.py: RecursionError escaped the validator",
        (
            lambda: _event_when("not " * 600 + "cell.good"),
            lambda: _event_when("cell.good > " + "-" * 600 + "1"),
        ),
    ),
    "pattern-compile": Bug(
        "FieldRule._check caught only re.error: re.compile raises OverflowError for "
        "`a{4294967296}` and RecursionError for ~1000 nested groups",
        (lambda: _event_pattern("a{4294967296}"), lambda: _event_pattern("(" * 1000 + ")" * 1000)),
    ),
    "issue-spans-lines": Bug(
        "messages quoted the user's value raw (f\"'{value}' is not a duration\" and many "
        "more), so a value with a line break gave an issue of several lines, the second not "
        "starting with the file name",
        (
            lambda: _minimal(source='    poll: "1\\nx"\n'),
            lambda: _event_when("x").replace(  # a multi-line `when:`, as people write them
                "{when: 'x'}", "\n      when: |\n        cell.good > 1\n        and 1\n"
            ),
            lambda: '"\\x1e": 1\n',  # a key with a record separator (str.splitlines breaks)
        ),
    ),
    "env-unclosed-refs": Bug(
        "envsubst._REFERENCE (`\\$\\{([^}]*)\\}`) rescanned to the end of the string from "
        "every unclosed `${`: quadratic, 40,000 characters of `${` took 2.5 s (80,000: 10 s)",
        (lambda: "gateway: {id: '" + "${" * 40_000 + "'}\n",),
        slow=True,
    ),
    "when-dashed-words": Bug(
        "expr._REF backtracked `[\\w-]*` to the end of the text from every word after a '-': "
        "a 40,000-character `when:` of `a-a-a-...` took 3.3 s",
        (lambda: _event_when("a-" * 40_000),),
        slow=True,
    ),
    "merge-bomb": Bug(
        "_Builder._entries flattened `<<` merges recursively without counting them against "
        "MAX_NODES: `mN: &mN {<<: [*mN-1, *mN-1]}` is 2^N walks (19 levels, 700 bytes: "
        "2.5 s; 40 levels: days), and the file even loaded",
        (lambda: _merge_bomb(19), lambda: _merge_bomb(40)),
        slow=True,
    ),
    "surrogate-in-message": Bug(
        'a lone surrogate (the YAML escape "\\ud800", or a non-UTF-8 byte in an environment '
        "variable, which os.environ holds as \\udcXX) in a value whose validator quotes it in "
        "its ValueError (durations, addresses, node ids, URLs, when:, patterns...): "
        "pydantic-core could not encode the message and raised UnicodeEncodeError out of "
        "model_validate (`edgegw check` died with a traceback)",
        (
            lambda: _minimal(source='    poll: "\\ud800"\n'),
            lambda: _minimal(source='    poll: "${P}"\n'),  # REPRODUCER_ENVIRON
            lambda: '{"\\ud800": 1}\n',
        ),
    ),
    "when-parser-memory": Bug(
        "`(1 and ` nested 200 times (1,601 characters, within when's max_length of 2000): "
        "ast.parse raised MemoryError (the CPython parser's stack), which parse_condition "
        "did not turn into an ExpressionError",
        (lambda: _event_when("(1 and " * 200 + "1" + ")" * 200),),
    ),
    "too-deep-without-position": Bug(
        "a file nested too deeply, once refused instead of a RecursionError, was reported as "
        "`FILE: the file nests ... too deeply`: neither a position nor a path",
        (lambda: "[" * 600 + "]" * 600 + "\n", lambda: "- " * 600 + "x\n"),
    ),
}

# Still open: strict xfails below; the property tests recognise them (`recognise`), count them
# in the ledger row (as `lost`) and go on. When a fix makes its xfail XPASS(strict), move the
# entry to FIXED. Example entry:
#     "short-id": Bug(
#         "what goes wrong, where",
#         (lambda: "{!!int abc: x}\n",),
#         recognise=lambda exc: isinstance(exc, ValueError) and _through(exc, "yamlpos.py"),
#         fails_with=ValueError,
#     ),
KNOWN_BUGS: dict[str, Bug] = {}


def _known_bug(exc: BaseException) -> str | None:
    for bug_id, bug in KNOWN_BUGS.items():
        if bug.recognise is not None and bug.recognise(exc):
            return bug_id
    return None


def _line_count(raw: bytes) -> int:
    """An upper bound of the lines PyYAML counts (it also breaks on \\r, \\x85, \\u2028...)."""
    text = raw.decode("utf-8", errors="replace")
    return max(len(text.splitlines()), raw.count(b"\n")) + 1


def check_issues(issues: Any, name: str, lines_in_file: int) -> None:
    """Assert the issue-list contract."""
    assert isinstance(issues, list), issues
    assert len(issues) >= 2, f"no issue besides the summary: {issues!r}"
    assert all(isinstance(issue, str) for issue in issues), issues
    *problems, summary = issues
    match = _SUMMARY.fullmatch(summary)
    assert match, f"last line is not the summary: {summary!r}"
    count = int(match.group(1))
    assert count == len(problems), f"summary says {count}, {len(problems)} issues: {issues!r}"
    assert summary == f"{count} error{'' if count == 1 else 's'}; gateway not started."
    for issue in problems:
        assert issue, f"empty issue in {issues!r}"
        # One line by str.splitlines: no \n \r \v \f \x1c-\x1e \x85 \u2028 \u2029.
        assert len(issue.splitlines()) == 1, f"issue spans several lines: {issue!r}"
        assert issue.startswith(name), f"issue does not start with {name!r}: {issue!r}"
        tail = issue[len(name) :]
        position = _POSITION.match(tail)
        if position:
            line, column = int(position.group(1)), int(position.group(2))
            assert 1 <= line <= lines_in_file, f"line {line} of {lines_in_file}: {issue!r}"
            assert column >= 1, issue
            tail = tail[position.end() :]
        if tail.startswith(": "):
            message = tail[2:]
            assert message.strip(), f"empty message: {issue!r}"
            assert position or message.startswith(_WHOLE_FILE), (
                f"issue names neither a position nor a path: {issue!r}"
            )
        else:
            assert tail.startswith(" "), f"malformed issue: {issue!r}"
            path, separator, message = tail[1:].partition(": ")
            assert path, f"issue without a path: {issue!r}"
            assert separator, f"malformed issue: {issue!r}"
            assert message.strip(), f"empty message: {issue!r}"


def check_contract(
    workdir: Path,
    content: bytes | str,
    environ: Mapping[str, str] | None = None,
    *,
    strategy: str,
) -> GatewayConfig | ConfigError | None:
    """Write `content`, load it, assert the contract; None when a known bug was hit."""
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    path = workdir / FILE_NAME
    path.write_bytes(raw)
    name = str(path)
    LEDGER.examples[strategy] += 1
    try:
        result = load_config(name, environ={} if environ is None else environ)
    except ConfigError as exc:
        check_issues(exc.lines(), name, _line_count(raw))
        LEDGER.errors += 1
        return exc
    except Exception as exc:  # the contract: nothing but ConfigError
        bug_id = _known_bug(exc)
        if bug_id is None:
            raise AssertionError(
                f"load_config raised {type(exc).__name__} (not ConfigError): {exc!s:.300}"
            ) from exc
        LEDGER.known_bugs[bug_id] += 1
        if currently_in_test_context():
            event(f"known bug: {bug_id}")
            note(f"known bug {bug_id}: {type(exc).__name__}")
        return None
    assert isinstance(result, GatewayConfig), type(result)
    LEDGER.configs += 1
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-fuzz")


# --- 1. arbitrary bytes, text and YAML-shaped noise ----------------------------------------

# fmt: off
YAML_TOKENS = [
    "{", "}", "[", "]", ", ", ": ", ":", "- ", "? ", "\n", "\n  ", "\n    ", "  ", "\t", "\r\n",
    "\r", "\x85", "\u2028", "\ufeff", "\x00", "\x07", "#", "# comment\n", "'", '"', "\\", "|",
    ">", "|-\n  ", "---\n", "...\n", "--- ", "%YAML 1.1\n", "%YAML 2.0\n", "%TAG !e! tag:e,2000:\n",
    "&a ", "&b ", "*a", "*b", "*nope", "<<: ", "<<: *a", "<<: [*a, *b]", "!!int ", "!!float ",
    "!!bool ", "!!str ", "!!null ", "!!binary ", "!!set ", "!!omap ", "!!map ", "!!seq ",
    "!!timestamp ", "!e!x ", "!env ", "!!python/object/apply:os.system ", "!<tag:x> ",
    "gateway", "sources", "events", "sequences", "mqtt", "outbox", "id", "name", "protocol",
    "modbus", "opcua", "tags", "url", "tcp://h:502", "address", "holding:1", "type", "uint16",
    "when", "trigger", "key", "fields", "values", "poll", "500ms", "1e309", "-1s", ".nan",
    ".inf", "-.inf", "~", "null", "yes", "on", "off", "0x" + "f" * 40, "0o17", "0b101",
    "1_000", "190:20:30", "2024-05-01", "2001-12-14t21:59:43.10-05:00", "9" * 30, "abc",
    "${X}", "${X:-d}", "$${", "${", "${}", "é", "😀", "\u202e", "\ufffe",
]
# fmt: on


@st.composite
def yaml_soup(draw: st.DrawFn) -> str:
    tokens = draw(
        st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=6)), max_size=60)
    )
    return "".join(tokens)


@given(raw=st.binary(max_size=1500))
@fuzz_settings(examples=200)
@example(raw=b"\xff\xfe\x00g\x00a")  # UTF-16 BOM: not UTF-8
@example(raw=b"gateway: {id: \xc3\x28}\n")  # invalid continuation byte
@example(raw=b"\xef\xbb\xbfgateway: {id: gw1}\n")  # UTF-8 BOM
@example(raw=b"a: \x00\n")
@example(raw=b"")
@example(raw=b"   \n\n# only a comment\n")
def test_arbitrary_bytes(workdir: Path, raw: bytes) -> None:
    check_contract(workdir, raw, strategy="bytes")


@given(text=st.one_of(st.text(max_size=400), yaml_soup()))
@fuzz_settings(examples=450)
@example(text="a: 1\n---\nb: 2\n")
@example(text="a: 1\n...\n---\n")
@example(text="--- 1\n--- 2\n")
@example(text="gateway:\n\tid: gw1\n")
@example(text="a: 1\na: 2\na: 3\n")
@example(text="on: 1\n1: 2\ntrue: 3\n")
@example(text="<<: {a: 1}\n<<: {b: 2}\n")
@example(text="a: &a {x: *a}\n")
@example(text="a: &a [*a]\n")
@example(text="a: *undefined\n")
@example(text="{? [a, b]: c}\n")
@example(text="!!python/object/apply:os.system ['true']\n")
@example(text="%YAML 1.1\n%YAML 1.1\n--- a\n")
@example(text="a: '" + "${" * 2000 + "'\n")
@example(text="a: " + "9" * 5000 + "\n")  # more than 4300 digits, decimal: PyYAML refuses
def test_arbitrary_text(workdir: Path, text: str) -> None:
    check_contract(workdir, text, strategy="text")


# Flow-style documents written token by token: every construct PyYAML has, nested.

_ANCHORS = ("a", "b", "c")


@functools.cache
def _flow_scalar() -> st.SearchStrategy[str]:
    # fmt: off
    return st.one_of(
        st.sampled_from(
            [
                "x", "gw1", "1", "-0", "0x1F", "0o7", "1_0", "1e3", "1e309", ".nan", "-.inf",
                "null", "~", "true", "yes", "Off", "2024-05-01", "12:30:00", '""', "''",
                '"${X}"', '"$${X}"', '"a\\nb"', '"\\x00"', '"\\N\\L\\P"', "'it''s'",
                "holding:99999.17", "500ms", "!!int 7", "!!int abc", "!!float x",
                "!!bool maybe", "!!str 1", "!!null ''", "!!binary aGk=", "!!timestamp 2001-12-14",
                "!x y", "0x" + "f" * 3600,
            ]
        ),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
        st.integers().map(str),
    )
    # fmt: on


@st.composite
def flow_node(draw: st.DrawFn, depth: int = 0) -> str:
    choice = draw(st.integers(0, 9 if depth < 4 else 2))
    if choice <= 2:
        node = draw(_flow_scalar())
    elif choice == 3:
        return "*" + draw(st.sampled_from(_ANCHORS))
    elif choice <= 5:
        items = draw(st.lists(flow_node(depth + 1), max_size=4))
        node = "[" + ", ".join(items) + "]"
    else:
        entries = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.integers(0, 6))
            if kind == 0:
                key = "<<"
                value = draw(
                    st.sampled_from(["*a", "*b", "[*a, *b]", "[*a, x]", "x", "{m: 1}", "[]"])
                )
            else:
                key = draw(st.one_of(_flow_scalar(), st.sampled_from(["<<", "? [a]", "{k: v}"])))
                value = draw(flow_node(depth + 1))
            entries.append(f"{key}: {value}")
        if entries and draw(st.booleans()):
            entries.append(draw(st.sampled_from(entries)))  # a duplicate key
        node = "{" + ", ".join(entries) + "}"
    if draw(st.integers(0, 4)) == 0:
        node = f"&{draw(st.sampled_from(_ANCHORS))} {node}"
    if draw(st.integers(0, 9)) == 0:
        node = f"{draw(st.sampled_from(['!!map', '!!seq', '!!set', '!!omap', '!t']))} {node}"
    return node


@st.composite
def flow_document(draw: st.DrawFn) -> str:
    defs = draw(st.lists(flow_node(), max_size=3))
    body = draw(flow_node())
    top = [f"d{i}: &{_ANCHORS[i % 3]} {node}" for i, node in enumerate(defs)]
    top.append(f"root: {body}")
    if draw(st.booleans()):
        top.append(draw(st.sampled_from(["gateway: {id: gw1}", "<<: *a", "root: again"])))
    return "\n".join(draw(st.permutations(top))) + "\n"


@given(text=flow_document())
@fuzz_settings(examples=400)
def test_flow_documents_with_anchors_merges_tags(workdir: Path, text: str) -> None:
    check_contract(workdir, text, strategy="flow documents")


# --- 2. structure-aware: mutations of the valid configs in the repository -----------------


def _base_texts() -> dict[str, str]:
    paths = [
        REPO / "config" / "demo.yaml",
        REPO / "tests" / "configs" / "opcua-valid" / "config.yaml",
        REPO / "tests" / "configs" / "valid-demo-like" / "config.yaml",
        *sorted((REPO / "tests" / "events").glob("*/config.yaml")),
    ]
    return {str(path.relative_to(REPO)): path.read_text() for path in paths if path.is_file()}


BASE_TEXTS = _base_texts()
BASES: dict[str, Any] = {name: yaml.safe_load(text) for name, text in BASE_TEXTS.items()}


@dataclass(frozen=True)
class Raw:
    """A YAML snippet written as is (a plain scalar such as `0x...` or `!!int abc`)."""

    text: str


# fmt: off
DURATIONS = [
    "500ms", "1s", "7d", "0s", "0ms", "-1s", "1e309ms", "1.5.5s", "ms", "s", " 2 s ", "2 S",
    "1 m", "10w", "1h30m", "9" * 400 + "d", "0.0000001ms", "nan s", "inf s", "\uff11s", "1s\n",
    "P1D", "00:01", "",
]
ADDRESSES = [
    "holding:0", "holding:65535", "holding:65536", "holding:99999.17", "holding:10.15",
    "holding:10.16", "holding:-1", "HOLDING:1", "coil:3", "coil:3.1", "discrete:70000",
    "input:65534", "holding:65533", "holding", ":1", "holding:", "holding:1.", "coils:1",
    "holding:١٢", "holding:1e3", "holding: 1", " holding:1 ", "holding:" + "9" * 50, "",
]
NODE_IDS = [
    "i=2259", "ns=2;i=1042", "ns=65535;s=x", "ns=65536;s=x", "ns=99999999999999999999;i=1",
    "i=4294967295", "i=4294967296", "i=-1", "i=١٢٣", "i=²", "s=", "s=\x01", "g=xyz",
    "g=09087e75-8e5e-499b-954f-f2a9603db28a", "b=AQID", "b=!!", "b=A", "nsu=;s=x",
    "nsu=urn:x;s=Filler.State", "nsu=urn:a;b;s=x", "ns=1;x=1", "ns=1;", "", "ns=2;s=a\nb",
    "i=" + "9" * 5000,
]
URLS = [
    "tcp://127.0.0.1:5020", "tcp://h", "tcp://", "tcp://h:0", "tcp://h:65536", "tcp://h:-1",
    "tcp://h:abc", "tcp://[::1", "tcp://[::1]:502", "tcp://user:pw@h", "udp://h",
    "mqtt://127.0.0.1:1883", "mqtts://h", "mqtt://", "mqtt://h:99999", "mqtt://a\uff03b",
    "opc.tcp://127.0.0.1:4840/", "opc.tcp://u:p@h/", "opc.tcp://h:4840/${X}", "opc.tcp:/h",
    "http://h", "h:502", "", "tcp://h:502/" + "x" * 300,
]
TOPICS = [
    "{site}/{area}/{line}/{source}/{tag}", "{site}/{nope}", "{", "}", "{}", "{0}", "{site!r}",
    "{site:>10}", "{site.x}", "{site[0]}", "a/#", "a/+/b", "a//b", "/x", "", "{{site}}",
    "{gateway}/status", "{type}", "x" * 70000,
]
WHEN_ADVERSARIAL = [
    "__import__('os').system('true')", "lambda: 0", "cell.good.__class__", "cell.good()",
    "[x for x in cell]", "f'{cell.good}'", "cell.good if 1 else 2", "cell.good >", "'open",
    "cell.good is None", "cell.good in (1, 2)", "(x := 1)", "*cell", "yield 1", "await x",
    "cell.good + 1 > 2", "~1", "+1", "1 @ 2", "cell['good']", "cell.good >= 1e309",
    "cell.good == 'a' 'b'", "not", "", " ", "\n", "cell.good\n>= 1", "# comment",
    "cell.good == \"unterminated", "cel.state == 'done'", "press-01.temp > 3",
    "a.b.c == 1", "cell. good == 1", "-" * 100 + "1", "not " * 100 + "cell.good",
    "(" * 150 + "cell.good" + ")" * 150, "(" * 250 + "1" + ")" * 250,
    " and ".join(["cell.good > 0"] * 300), "cell.good == '" + "x" * 5000 + "'",
]
PATTERNS = [
    "^B[0-9]{3,}$", "^B[0-9", "(", ")", "*", "a{2,1}", "a{99999}", "(?P<x>a)(?P<x>b)",
    "\\", "[z-a]", "(?<=a+)b", "(a*)*b", "(?i", "\\p{L}", "(" * 50 + ")" * 50, "",
]
NAMES = ["gw1", "cell", "a", "_", "-a", "a-", "a.b", "a b", "a/b", "é", "", "x" * 64, "x" * 65]
TAG_REFS = ["cell.good", "cell.state", "cell.order_status", "cel.state", "cell.", ".good",
            "cell.good.x", "gateway.id", "gateway.site", "filler.state", "press-01.state"]
RAW_SNIPPETS = [
    "0x" + "f" * 64, "0o777", "0b1010", "1_000_000", "190:20:30", "2024-05-01", "~", ".NaN",
    "-.Inf", "yes", "Off", "!!int 12", "!!str 12", "!!float 1", "!!binary aGk=",
    "!!timestamp 2001-12-14", "*nowhere", "!!int abc", "!!bool maybe", "0x" + "f" * 3600,
]

DOMAIN: dict[str, list[Any]] = {
    "poll": DURATIONS, "timeout": DURATIONS, "interval": DURATIONS, "keepalive": DURATIONS,
    "connect_timeout": DURATIONS, "session_timeout": DURATIONS, "retry": DURATIONS,
    "heartbeat": DURATIONS, "max_age": DURATIONS, "address": ADDRESSES, "node": NODE_IDS,
    "url": URLS, "topic": TOPICS, "status_topic": TOPICS, "event_topic": TOPICS,
    "schema_topic": TOPICS, "when": WHEN_ADVERSARIAL, "pattern": PATTERNS, "name": NAMES,
    "id": NAMES, "site": NAMES, "area": NAMES, "line": NAMES, "tag": TAG_REFS,
    "changes": [*TAG_REFS, True, False], "rises": [*TAG_REFS, True], "falls": TAG_REFS,
    "changes_to": ["done", 0, False, None, 1.5, "completed", [1]],
    "type": ["uint16", "uint61", "bool", "string", "float64", "int", "str", "number",
             "batch.completed", "a..b", ".a", "x" * 65],
    "protocol": ["modbus", "opcua", "modbuss", "OPCUA", "", "s7"],
    "mode": ["subscribe", "poll", "Sign", "SignAndEncrypt", "push"],
    "security": ["none", "None", "NONE", "tls", {"policy": "Basic256Sha256"},
                 {"policy": "Basic256Sha256", "certificate": "/etc/hostname",
                  "private_key": "/etc/hostname", "trust": ["/etc", "/nonexistent"]}],
    "synchronous": ["full", "normal", "extra", "off"], "version": ["5", "3.1.1", 5, 3.1],
    "qos": [0, 1, 2, "1", True], "byte_order": ["big", "little", "middle"],
    "word_order": ["big", "little", "middle"], "unit": [0, 1, 255, 256, -1, "bar", 2**64],
    "length": [0, 1, 125, 126, 8], "max_gap": [0, 124, 125, -1], "queue_size": [0, 1, 10001],
    "inflight": [0, 1, 10000, 10001], "max_rows": [999, 1000, 2**70, 1.5],
    "deadband": [0.5, "2%", "-2%", "%", "x%", -1, "nan%", "inf", float("nan")],
    "min": [0, -1e308, float("inf"), float("nan"), "1"], "max": [100, -1, float("-inf")],
    "scale": [0.1, 0, float("nan")], "offset": [1e308, -1],
    "password_file": ["/etc/hostname", "/nonexistent", "", "a\x00b", "/etc"],
    "username": ["op", "", "${OPC_USER}"], "certificate": ["/etc/hostname", "/nonexistent"],
    "private_key": ["/etc/hostname"], "trust": [[], ["/etc"], ["/nonexistent"], "/etc"],
    "http": [{"listen": "127.0.0.1:9108"}, {}, {"listen": None}, None, "127.0.0.1:9108"],
    "listen": ["127.0.0.1:9108", ":9108", "h:", "h:65536", "h:\u00b2", "h:\u0661\u0662",
               "[::1]:9108", "::1:80", "h:" + "9" * 5000, "", 9108],
    "state_dir": ["/tmp/unused", "", "\x00"], "path": ["/tmp/x.sqlite3", ""],
    "client_id": ["c", "x" * 129], "key": [[], ["good"], ["good", "good"], ["nope"], "good"],
    "fields": [{}, {"good": "cell.good"}, {"1bad": "cell.good"}, {"g": "gateway.nope"},
               {"g": "gateway.line"}, {"g": "nosuch.tag"}],
    "values": [{0: "idle", 1: "running"}, {}, {True: "on", "1": "one"}, {2**70: "big"},
               {None: "x"}, {1.5: "x"}, {0: "not a name"}, {"0": "idle", 0: "zero"}],
    "transitions": [{}, {"created": ["released"]}, {"created": "released"}, {"x": [1]},
                    {"nope": ["nada"]}, {1: ["created"]}],
    "contract": [{}, {"good": {"type": "int", "min": 5, "max": 1}},
                 {"good": {"type": "str", "pattern": "(", "min": 1}},
                 {"nope": {"type": "int"}}, {"good": {"type": "bool", "values": []}}],
}

KNOWN_KEYS = sorted(set(DOMAIN) | {"gateway", "mqtt", "outbox", "sources", "tags", "events",
                                   "sequences", "trigger", "description", "policy", "required",
                                   "<<"})
# fmt: on


@functools.cache
def _env_strings() -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "${X}",
                    "${X:-d}",
                    "$${",
                    "${",
                    "}",
                    "${}",
                    "${1A}",
                    "${A-b}",
                    "${A:-${B}}",
                    "$",
                    "${PATH}",
                    "${HOME:-/h}",
                ]
            ),
            st.text(max_size=5),
        ),
        min_size=1,
        max_size=4,
    ).map("".join)


@functools.cache
def _hostile_scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**130), max_value=2**130),
        st.sampled_from([2**64, 2**63, -(2**63) - 1, 2**1000, 0, -1]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=4),
        _env_strings(),
        st.sampled_from(RAW_SNIPPETS).map(Raw),
    )


@functools.cache
def hostile_value() -> st.SearchStrategy[Any]:
    return st.recursive(
        _hostile_scalar(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers()),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=8,
    )


def value_for(key: Any) -> st.SearchStrategy[Any]:
    """A value for `key`: its domain's near-misses if it has one, else anything."""
    return _value_for_name(key) if isinstance(key, str) else hostile_value()


@functools.cache  # keyed by str only: True == 1 would make a cache depend on call order
def _value_for_name(key: str) -> st.SearchStrategy[Any]:
    if key == "when":
        return st.one_of(when_expression(), hostile_value())
    pool = DOMAIN.get(key)
    if pool is None:
        return hostile_value()
    # Copies: a later mutation must not change the pool (hypothesis replays draws).
    domain = st.sampled_from(pool).map(copy.deepcopy)
    return st.one_of(domain, domain, hostile_value())


def key_variant(key: Any) -> st.SearchStrategy[Any]:
    """A renamed key: a typo of it, another valid key, or something that is no key at all."""
    text = str(key)
    typos = [text.upper(), text[:-1], text + "s", text[1:] + text[:1], f" {text}", text * 2]
    return st.one_of(
        st.sampled_from([t for t in typos if t] or ["x"]),
        st.sampled_from(KNOWN_KEYS),
        st.text(max_size=10),
        st.sampled_from([None, True, 0, -1, 2**70, 1.5, float("nan")]),
    )


# Events and sequences built from their parts, well-formed or nearly.
_TRIGGER_KEYS = ["tag", "changes_to", "changes", "rises", "falls", "when"]


@st.composite
def trigger_section(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(_TRIGGER_KEYS), min_size=1, max_size=3, unique=True))
    return {key: draw(value_for(key)) for key in keys}


@st.composite
def event_section(draw: st.DrawFn) -> dict[str, Any]:
    fields = draw(
        st.dictionaries(
            st.sampled_from(["good", "batch", "state", "line", "order", "_x", "1bad", "a-b"]),
            st.sampled_from([*TAG_REFS, "gateway.line", "gateway.id", 7, None]),
            max_size=4,
        )
    )
    section: dict[str, Any] = {
        "type": draw(st.sampled_from(DOMAIN["type"] + ["batch.completed", "e"])),
        "trigger": draw(st.one_of(trigger_section(), hostile_value())),
        "key": draw(st.lists(st.sampled_from([*fields, "good", "nope"]), max_size=3)),
        "fields": fields,
    }
    if draw(st.booleans()):
        section["contract"] = {
            name: draw(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["int", "float", "number", "str", "bool", "x"])},
                    optional={
                        "min": value_for("min"),
                        "max": value_for("max"),
                        "pattern": st.sampled_from(PATTERNS),
                        "values": st.lists(_hostile_scalar(), max_size=3),
                        "required": st.sampled_from([True, False, "no", None]),
                    },
                )
            )
            for name in draw(st.lists(st.sampled_from([*fields, "nope"]), max_size=2))
        }
    for key in draw(st.lists(st.sampled_from(list(section)), max_size=1)):
        del section[key]  # a required part missing
    return section


@st.composite
def sequence_section(draw: st.DrawFn) -> dict[str, Any]:
    states = ["created", "released", "running", "completed", "aborted", "idle", "done", "nope"]
    return {
        "tag": draw(st.sampled_from(TAG_REFS)),
        "transitions": draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(states), st.lists(st.sampled_from(states), max_size=3)
                ),
                value_for("transitions"),
            )
        ),
    }


@functools.cache
def when_expression() -> st.SearchStrategy[str]:
    refs = st.sampled_from([*TAG_REFS, "x", "good", "cell.good.real", "True", "None"])
    literals = st.one_of(
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=8).map(repr),
        st.sampled_from(["'done'", '"done"', "1e309", "0x10", "1_0", "1j", "b'x'", "..."]),
    )
    # fmt: off
    ops = st.sampled_from(
        ["==", "!=", "<", "<=", ">", ">=", "is", "is not", "in", "not in", "+", "-", "*", "/",
         "%", "**", "@", "<<", "&", "|", "^", "and", "or", ":=", "if 1 else", ","]
    )
    # fmt: on
    grammar = st.recursive(
        st.one_of(refs, literals),
        lambda inner: st.one_of(
            st.tuples(inner, ops, inner).map(" ".join),
            st.tuples(st.sampled_from(["not ", "-", "+", "~", "not not "]), inner).map("".join),
            inner.map(lambda text: f"({text})"),
            st.tuples(inner, st.sampled_from([" and ", " or "]), inner).map("".join),
        ),
        max_leaves=12,
    )
    return st.one_of(grammar, st.sampled_from(WHEN_ADVERSARIAL), st.text(max_size=40))


# The mutation engine: paths into the plain data, then emission as YAML text.

YamlPath = tuple[Any, ...]


def _paths(node: Any, prefix: YamlPath = ()) -> Iterator[YamlPath]:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


def _get(root: Any, path: YamlPath) -> Any:
    for part in path:
        root = root[part]
    return root


@dataclass
class Links:
    """Anchors, aliases, merges and duplicate keys to write into the emitted text."""

    anchors: dict[YamlPath, str] = field(default_factory=dict)
    aliases: dict[YamlPath, str] = field(default_factory=dict)
    merges: dict[YamlPath, str] = field(default_factory=dict)
    duplicates: dict[YamlPath, list[tuple[Any, Any]]] = field(default_factory=dict)


_PRINTABLE = re.compile(r"[\t\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")


def _quote(text: str) -> str:
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif char != "\t" and _PRINTABLE.fullmatch(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)  # YAML 1.1 floats need a dot: 1e+300 -> 1.0e+300
        return text if "." in text else text.replace("e", ".0e", 1)
    return _quote(str(value))


def emit_flow(node: Any, links: Links, path: YamlPath = ()) -> str:
    if path in links.aliases:
        return "*" + links.aliases[path]
    anchor = f"&{links.anchors[path]} " if path in links.anchors else ""
    if isinstance(node, dict):
        entries = [
            f"{_scalar(key)}: {emit_flow(child, links, (*path, key))}"
            for key, child in node.items()
        ]
        entries += [
            f"{_scalar(key)}: {emit_flow(child, Links())}"
            for key, child in links.duplicates.get(path, [])
        ]
        if path in links.merges:
            entries.insert(len(entries) // 2, f"<<: *{links.merges[path]}")
        return anchor + "{" + ", ".join(entries) + "}"
    if isinstance(node, list):
        items = [emit_flow(child, links, (*path, index)) for index, child in enumerate(node)]
        return anchor + "[" + ", ".join(items) + "]"
    return anchor + _scalar(node)


def emit_block(data: Any) -> str:
    """Block-style YAML through PyYAML; Raw snippets go in through placeholders."""
    raws: dict[str, str] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            token = f"zzraw{len(raws)}zz"
            raws[token] = node.text
            return token
        if isinstance(node, dict):
            return {swap(key): swap(child) for key, child in node.items()}
        if isinstance(node, list):
            return [swap(child) for child in node]
        return node

    text = yaml.safe_dump(swap(data), sort_keys=False, allow_unicode=True, width=10**9)
    for token, snippet in raws.items():
        text = text.replace(token, snippet)
    return text


OPERATIONS = [
    "replace",
    "replace",
    "delete",
    "rename",
    "insert",
    "duplicate",
    "transplant",
    "events",
    "sequences",
]


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    base_name = draw(st.sampled_from(sorted(BASES)))
    note(f"base: {base_name}")
    data = copy.deepcopy(BASES[base_name])
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        parent = _get(data, path[:-1]) if path else None
        key = path[-1] if path else None
        operation = draw(st.sampled_from(OPERATIONS))
        note(f"{operation} at {path!r}")
        if operation == "events":
            data = data if isinstance(data, dict) else {"gateway": data}
            data["events"] = draw(st.lists(event_section(), max_size=3))
        elif operation == "sequences":
            data = data if isinstance(data, dict) else {"gateway": data}
            data["sequences"] = draw(st.lists(sequence_section(), max_size=2))
        elif parent is None:
            data = draw(hostile_value()) if operation == "replace" else data
        elif operation == "replace":
            parent[key] = draw(value_for(key))
        elif operation == "delete":
            del parent[key]
        elif operation == "rename" and isinstance(parent, dict):
            new_key = draw(key_variant(key))
            parent[new_key] = parent.pop(key)
        elif operation == "insert" and isinstance(parent, dict):
            new_key = draw(st.sampled_from(KNOWN_KEYS))
            parent[new_key] = draw(value_for(new_key))
        elif operation == "duplicate" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(parent[key]))
        elif operation == "transplant":
            parent[key] = copy.deepcopy(_get(data, draw(st.sampled_from(paths))))
    links = Links()
    paths = list(_paths(data))
    if draw(st.integers(0, 2)) == 0 and len(paths) > 1:  # anchor somewhere, alias elsewhere
        for index in range(draw(st.integers(1, 2))):
            source, target = draw(st.sampled_from(paths)), draw(st.sampled_from(paths[1:]))
            links.anchors[source] = f"a{index}"
            links.aliases.setdefault(target, f"a{index}")
    mappings = [path for path in paths if isinstance(_get(data, path), dict)]
    if draw(st.integers(0, 2)) == 0 and len(mappings) > 1:  # `<<: *anchor` into a mapping
        source, target = draw(st.sampled_from(mappings)), draw(st.sampled_from(mappings))
        links.anchors.setdefault(source, "m")
        links.merges[target] = links.anchors[source]
    if draw(st.integers(0, 3)) == 0 and mappings:  # a key written twice
        target = draw(st.sampled_from(mappings))
        mapping = _get(data, target)
        if mapping:
            duplicate = draw(st.sampled_from(list(mapping)))
            links.duplicates[target] = [(duplicate, draw(value_for(duplicate)))]
    has_links = bool(links.anchors or links.aliases or links.merges or links.duplicates)
    flow = has_links or draw(st.booleans())
    text = emit_flow(data, links) + "\n" if flow else emit_block(data)
    if draw(st.integers(0, 5)) == 0:  # a text-level edit: a tab, a line twice, a lost line
        lines = text.splitlines(keepends=True)
        where = draw(st.integers(0, max(0, len(lines) - 1)))
        edit = draw(st.sampled_from(["tab", "twice", "drop", "crlf", "bom", "doc"]))
        if edit == "tab" and lines:
            lines[where] = "\t" + lines[where]
        elif edit == "twice" and lines:
            lines.insert(where, lines[where])
        elif edit == "drop" and lines:
            del lines[where]
        elif edit == "crlf":
            lines = [line.replace("\n", "\r\n") for line in lines]
        elif edit == "bom":
            lines.insert(0, "\ufeff")
        elif edit == "doc":
            lines += ["---\n", "gateway: {id: second}\n"]
        text = "".join(lines)
    return text


@given(text=mutated_config())
@fuzz_settings(examples=1300)
def test_mutated_valid_configs(workdir: Path, text: str) -> None:
    result = check_contract(workdir, text, strategy="mutations")
    event(f"outcome: {type(result).__name__}")


# Events and sequences over real tags: these pass the model, so they reach the cross-entry
# checks (crossrefs.py), whose promise is checked too: a loaded config names only tags it has.

CELL_TAGS: list[dict[str, Any]] = [
    {"name": "state", "address": "holding:0", "type": "uint16",
     "values": {0: "idle", 1: "running", 3: "done"}},
    {"name": "good", "address": "holding:1", "type": "uint16"},
    {"name": "temp", "address": "holding:2", "type": "float32"},
    {"name": "running", "address": "coil:0", "type": "bool"},
    {"name": "batch", "address": "holding:210", "type": "string", "length": 8},
]  # fmt: skip
CELL_REFS = [f"cell.{tag['name']}" for tag in CELL_TAGS]
REFS = st.sampled_from([*CELL_REFS, *CELL_REFS, "cell.nope", "cel.state", "other.good"])
STATES = st.sampled_from(["idle", "running", "done", "runing", "", "0"])
CHANGE_VALUES = st.one_of(
    STATES, st.integers(-2, 4), st.booleans(), st.floats(), st.text(max_size=4)
)


@st.composite
def near_valid_trigger(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["changes_to", "changes", "rises", "falls", "when"]))
    if kind == "changes_to":
        return {"tag": draw(REFS), "changes_to": draw(CHANGE_VALUES)}
    if kind == "when":
        ops = st.sampled_from(["==", "!=", "<", ">=", "and", "or"])
        operand = st.one_of(REFS, CHANGE_VALUES.map(repr))
        parts = draw(st.lists(st.tuples(operand, ops), min_size=1, max_size=4))
        return {"when": " ".join(f"{a} {op}" for a, op in parts) + " " + draw(operand)}
    if draw(st.booleans()):
        return {kind: draw(REFS)}
    return {"tag": draw(REFS), kind: True}


@st.composite
def near_valid_config(draw: st.DrawFn) -> dict[str, Any]:
    events = []
    for _ in range(draw(st.integers(0, 4))):
        fields = draw(
            st.dictionaries(
                st.sampled_from(["batch", "good", "line", "temp", "n"]),
                st.one_of(REFS, st.sampled_from(["gateway.line", "gateway.id"])),
                min_size=1,
                max_size=3,
            )
        )
        events.append(
            {
                "type": draw(st.sampled_from(["batch.completed", "line.started", "x"])),
                "trigger": draw(near_valid_trigger()),
                "key": draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, unique=True)),
                "fields": fields,
            }
        )
    sequences = [
        {
            "tag": draw(REFS),
            "transitions": draw(st.dictionaries(STATES, st.lists(STATES, max_size=3), min_size=1)),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {
        "gateway": {"id": "gw1", "site": "s", "area": "a", "line": "l", "state_dir": "/tmp/x"},
        "sources": [
            {
                "name": "cell",
                "protocol": "modbus",
                "url": "tcp://127.0.0.1:502",
                "tags": copy.deepcopy(CELL_TAGS),
            },
        ],
        "events": events,
        "sequences": sequences,
    }


@given(data=near_valid_config(), flow=st.booleans())
@fuzz_settings(examples=300)
def test_events_and_sequences_over_real_tags(
    workdir: Path, data: dict[str, Any], flow: bool
) -> None:
    text = emit_flow(data, Links()) + "\n" if flow else emit_block(data)
    result = check_contract(workdir, text, strategy="events over real tags")
    if isinstance(result, ConfigError):
        crossrefs = ("no tag '", "is not a value of", "can never be a value", "declared twice")
        reached = any(phrase in issue for issue in result.lines() for phrase in crossrefs)
        event("outcome: ConfigError" + (" from the cross-entry checks" if reached else ""))
    if not isinstance(result, GatewayConfig):
        return
    event("outcome: GatewayConfig")
    tags = {f"{src.name}.{tag.name}": tag for src in result.sources for tag in src.tags}
    for loaded in result.events:
        assert set(loaded.tag_refs()) <= set(tags), loaded
        trigger = loaded.trigger
        names = tags[trigger.tag].values if trigger.tag and trigger.kind == "changes_to" else None
        if names:
            assert trigger.changes_to in names.values(), trigger
    for sequence in result.sequences:
        assert sequence.tag in tags, sequence
        names = tags[sequence.tag].values
        if names:
            states = set(sequence.transitions) | {
                s for to in sequence.transitions.values() for s in to
            }
            assert states <= set(names.values()), sequence


@given(style=st.sampled_from(["flow", "block", "crlf", "bom"]), base=st.sampled_from(sorted(BASES)))
@fuzz_settings(examples=40)
def test_valid_configs_load_the_same_in_every_yaml_style(
    workdir: Path, style: str, base: str
) -> None:
    """The structure-aware strategies start from configs that are valid, whatever the style."""
    expected = check_contract(workdir, BASE_TEXTS[base], strategy="valid re-emitted")
    assert isinstance(expected, GatewayConfig), expected
    data = BASES[base]
    text = {
        "flow": lambda: emit_flow(data, Links()) + "\n",
        "block": lambda: emit_block(data),
        "crlf": lambda: BASE_TEXTS[base].replace("\n", "\r\n"),
        "bom": lambda: "\ufeff" + BASE_TEXTS[base],
    }[style]()
    again = check_contract(workdir, text, strategy="valid re-emitted")
    assert again == expected


# --- 3. ${VAR} expansion with a generated environment --------------------------------------

ENV_NAMES = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
    st.text(max_size=6),
)
ENV_VALUES = st.one_of(
    st.text(max_size=20),
    _env_strings(),
    st.sampled_from(["gw1", "tcp://127.0.0.1:502", "holding:1", "500ms", "cell.good > 1", ""]),
    st.sampled_from(["\udcff", "500\udce9s"]),  # a non-UTF-8 byte in os.environ (surrogateescape)
)
ENV_FIELDS: list[YamlPath] = [
    ("gateway", "id"),
    ("gateway", "state_dir"),
    ("mqtt", "url"),
    ("mqtt", "topic"),
    ("sources", 0, "url"),
    ("sources", 0, "poll"),
    ("sources", 0, "name"),
    ("sources", 0, "tags", 0, "name"),
    ("sources", 0, "tags", 0, "address"),
    ("sources", 0, "tags", 0, "description"),
    ("events", 0, "trigger", "when"),
    ("events", 0, "type"),
]


@st.composite
def env_case(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    environ = draw(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=6))
    names = st.one_of(st.sampled_from(sorted(environ) or ["UNSET"]), ENV_NAMES)
    reference = st.one_of(
        names.map(lambda name: f"${{{name}}}"),
        st.tuples(names, st.text(max_size=8)).map(lambda pair: f"${{{pair[0]}:-{pair[1]}}}"),
        st.sampled_from(["$${", "${}", "${ X}", "${A-b}", "${A:-${B}}", "$", "${", "}"]),
        st.text(max_size=6),
    )
    data: dict[str, Any] = {
        "gateway": {"id": "gw1", "site": "s", "area": "a", "line": "l", "state_dir": "/tmp/x"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "sources": [
            {
                "name": "cell",
                "protocol": "modbus",
                "url": "tcp://127.0.0.1:502",
                "tags": [{"name": "good", "address": "holding:1", "type": "uint16"}],
            }
        ],
        "events": [
            {
                "type": "e",
                "trigger": {"when": "cell.good > 1"},
                "key": ["good"],
                "fields": {"good": "cell.good"},
            }
        ],
    }
    for where in draw(st.lists(st.sampled_from(ENV_FIELDS), min_size=1, max_size=4)):
        _get(data, where[:-1])[where[-1]] = draw(
            st.lists(reference, min_size=1, max_size=3).map("".join)
        )
    if draw(st.booleans()):  # keys are never expanded; they must not break anything either
        data["gateway"][draw(reference)] = draw(reference)
    style = draw(st.sampled_from(["flow", "block"]))
    return (emit_flow(data, Links()) + "\n" if style == "flow" else emit_block(data)), environ


@given(case=env_case())
@fuzz_settings(examples=300)
@example(case=("gateway: {id: '${A}'}\n", {"A": "${B}", "B": "gw1"}))
@example(case=("gateway: {id: '${A:-${B}}'}\n", {}))
@example(case=("gateway: {id: '$${A}${'}\n", {"A": "x"}))
@example(case=("gateway: {id: '${A}'}\n", {"A": "\n- x: [\n"}))
def test_env_expansion_with_generated_environ(
    workdir: Path, case: tuple[str, dict[str, str]]
) -> None:
    text, environ = case
    check_contract(workdir, text, environ, strategy="env")


def _env_config(gateway_id: str, state_dir: str) -> str:
    return _minimal().replace(
        "gateway: {id: gw1, site: s, area: a, line: l}",
        f"gateway: {{id: {_quote(gateway_id)}, site: s, area: a, line: l, "
        f"state_dir: {_quote(state_dir)}}}",
    )


@given(
    gateway_id=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True),
    directory=st.text(max_size=40),
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    default=st.text(st.characters(exclude_characters="}", exclude_categories=["Cs"]), max_size=10),
)
@fuzz_settings(examples=150)
def test_env_values_are_filled_in_once_never_reexpanded(
    workdir: Path, gateway_id: str, directory: str, name: str, default: str
) -> None:
    """`${GW}` takes the value as is (even one holding `${`), `$${` is a literal `${`."""
    environ = {"GW": gateway_id, "DIR": directory}
    unset = "UNSET_" + name
    text = _env_config("${GW}", f"${{DIR}}|$${{{name}}}|${{{unset}:-{default}}}")
    config = check_contract(workdir, text, environ, strategy="env values")
    assert isinstance(config, GatewayConfig), config
    assert config.gateway.id == gateway_id
    assert config.gateway.state_dir == f"{directory}|${{{name}}}|{default}"


# --- deterministic hostile corpus: bombs, loops, merges, limits -----------------------------


def _laughs(levels: int, fan: int = 10) -> str:
    lines = ["l0: &l0 lol"]
    lines += [
        f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fan) + "]"
        for level in range(1, levels + 1)
    ]
    return "\n".join(lines) + "\n"


HOSTILE_CORPUS = {
    "billion laughs (10^9 values)": _laughs(9),
    "billion laughs under sources": _laughs(9) + "sources: *l9\n",
    "wide laughs (100 x 100 x 100)": _laughs(3, fan=100),
    "merge chain (2^6 merges)": _merge_bomb(6),
    "alias loop": "a: &a [1, *a]\n",
    "merge loop": "a: &a {<<: *a}\n",
    "mapping loop via merge list": "a: &a {b: 1, <<: [*a]}\n",
    "100 documents": "---\na: 1\n" * 100,
    "tab indentation": _minimal().replace("    url", "\turl"),
    "NUL in text": _minimal().replace("cell", "ce\x00ll"),
    "lone surrogate escape": 'gateway: {id: "\\ud800"}\n',
    "python tag, never executed": "!!python/object/apply:os.system ['touch /tmp/edgegw-pwned']\n",
    "custom tag": "gateway: !env GW\n",
    "binary": "gateway: !!binary aGk=\n",
    "set": "gateway: !!set {a, b}\n",
    "10000 duplicate keys": "a: 1\n" * 10_000,
    "50 KB string": "gateway: {id: '" + "x" * 50_000 + "'}\n",
    "1e309 and nan everywhere": _minimal().replace("502", "502\n    poll: 1e309\n    unit: .nan"),
    "2^64 unit": _minimal(source="    unit: 18446744073709551616\n"),
    "4300-digit int": "gateway: {id: " + "9" * 4300 + "}\n",
    "4301-digit int": "gateway: {id: " + "9" * 4301 + "}\n",
    "huge float key": "{1e309: x, .nan: y}\n",
    "complex key": "{[a]: x, {b: c}: y}\n",
    "yaml 1.2 directive": "%YAML 1.2\n---\n" + _minimal(),
    "folded block when": _event_when("x").replace(
        "{when: 'x'}", "\n      when: >\n        cell.good > 1\n        and cell.good < 9\n"
    ),
}


@pytest.mark.parametrize("text", HOSTILE_CORPUS.values(), ids=HOSTILE_CORPUS.keys())
def test_hostile_corpus(workdir: Path, text: str) -> None:
    marker = Path("/tmp/edgegw-pwned")
    started = time.perf_counter()
    result = check_contract(workdir, text, strategy="corpus")
    elapsed = time.perf_counter() - started
    # The blow-ups guarded against take minutes to days; the slowest entry takes under 1 s
    # here, so a machine ten times slower still passes.
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert result is not None, "hit a known bug"
    assert not marker.exists()


def test_unreadable_paths(workdir: Path) -> None:
    for path in (workdir / "missing.yaml", workdir):
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        check_issues(caught.value.lines(), str(path), 1)


# --- the bugs found: fixed ones stay fixed, open ones are strict xfails ----------------------

REPRODUCER_ENVIRON = {"P": "\udcff"}  # what os.environ holds for P=$'\xff' (surrogateescape)


def _contract_holds(workdir: Path, text: str) -> float:
    """Like check_contract, but nothing is tolerated; the seconds it took."""
    raw = text.encode("utf-8", "surrogatepass")
    path = workdir / FILE_NAME
    path.write_bytes(raw)
    started = time.perf_counter()
    try:
        result = load_config(path, environ=REPRODUCER_ENVIRON)
    except ConfigError as exc:
        elapsed = time.perf_counter() - started
        check_issues(exc.lines(), str(path), _line_count(raw))
    else:
        elapsed = time.perf_counter() - started
        assert isinstance(result, GatewayConfig), type(result)
    return elapsed


def _cases(bugs: dict[str, Bug], *, xfail: bool) -> list[Any]:
    return [
        pytest.param(
            bug_id,
            index,
            marks=(
                [pytest.mark.xfail(strict=True, raises=bug.fails_with, reason=bug.summary)]
                if xfail
                else []
            ),
            id=f"{bug_id}-{index}",
        )
        for bug_id, bug in bugs.items()
        for index in range(len(bug.reproducers))
    ]


@pytest.mark.parametrize(("bug_id", "index"), _cases(FIXED, xfail=False))
def test_fixed_bug_stays_fixed(workdir: Path, bug_id: str, index: int) -> None:
    bug = FIXED[bug_id]
    elapsed = _contract_holds(workdir, bug.reproducers[index]())
    if bug.slow:
        assert elapsed < SLOW_LIMIT, f"took {elapsed:.2f}s: {bug.summary}"


@pytest.mark.parametrize(("bug_id", "index"), _cases(KNOWN_BUGS, xfail=True))
def test_known_bug(workdir: Path, bug_id: str, index: int) -> None:
    bug = KNOWN_BUGS[bug_id]
    elapsed = _contract_holds(workdir, bug.reproducers[index]())
    if bug.slow:
        assert elapsed < SLOW_LIMIT, f"took {elapsed:.2f}s"


# --- the ledger row: made at the end of the run from the examples that ran ------------------


def _ledger_row() -> FaultRow | None:
    total = sum(LEDGER.examples.values())
    if not total:
        return None  # none of this file's property tests ran
    known = sum(LEDGER.known_bugs.values())
    per_strategy = ", ".join(f"{name} {count}" for name, count in LEDGER.examples.items())
    bugs = ", ".join(f"{name} x{count}" for name, count in LEDGER.known_bugs.items())
    return FaultRow(
        "hostile configs (hypothesis)",
        events_in=total,
        events_out=total - known,
        duplicates=0,
        lost=known,
        note=(
            f"only GatewayConfig ({LEDGER.configs}) or ConfigError ({LEDGER.errors}); "
            f"{per_strategy}" + (f"; known bugs hit: {bugs}" if bugs else "")
        ),
    )


_REPORT.at_end.append(_ledger_row)
