"""`edgegw COMMAND --help` explains each (README, "Two commands"): every command, run as a user
runs it, exits 0 and names its options, those the documentation promises and any other it
has."""

from __future__ import annotations

import argparse
import re

import pytest

from edgegw.cli.main import build_parser
from tests.support.cli import run_edgegw

# The commands and options the README and docs/*.md name (pinned here, not read from the
# parser: a command or option that disappears must fail this test).
DOCUMENTED: dict[tuple[str, ...], set[str]] = {
    (): {"--version", "--log-level", "--log-format"},
    ("run",): {"-c", "--config"},
    ("check",): {"-c", "--config"},
    ("demo",): {"--duration", "--broker", "--state-dir"},
    ("schema",): {"--events", "-c", "--config"},
    ("status",): {"-c", "--config", "--json"},
    ("outbox",): set(),
    ("outbox", "stats"): {"-c", "--config", "--json"},
    ("browse",): {"-c", "--config", "--source", "--under", "--depth", "--max-nodes"},
    ("pki",): set(),
    ("pki", "create"): {"--out", "--gateway-id", "-c", "--config", "--hostname", "--days"},
    ("quarantine",): {"-c", "--config", "--json", "--since"},
}
# Positional words the help must name too.
WORDS: dict[tuple[str, ...], set[str]] = {
    (): {"run", "check", "demo", "schema", "status", "outbox", "browse", "pki", "quarantine"},
    ("outbox",): {"stats"},
    ("pki",): {"create"},
    ("quarantine",): {"list", "release", "drop"},
}


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command of the real parser, by its words."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= parsers(sub, (*path, name))
    return found


COMMANDS = parsers(build_parser())


def words_of(text: str) -> set[str]:
    """The help's words as separate tokens: "-c" must not match inside "--config", and
    "{list,release,drop}" names three."""
    return {word for word in re.split(r"[\s\[\]{}(),|=]+", text) if word}


def test_every_command_is_documented_and_every_documented_one_exists() -> None:
    assert set(COMMANDS) == set(DOCUMENTED)


@pytest.mark.parametrize("words", sorted(DOCUMENTED), ids=lambda w: " ".join(w) or "edgegw")
def test_help_exits_0_and_names_the_options(words: tuple[str, ...]) -> None:
    result = run_edgegw(*words, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    assert text.startswith(f"usage: {' '.join(('edgegw', *words))}"), text[:200]
    named = words_of(text)
    assert DOCUMENTED[words] <= named, f"missing from the help: {DOCUMENTED[words] - named}"
    assert WORDS.get(words, set()) <= named, f"missing: {WORDS[words] - named}"
    has = {
        option
        for action in COMMANDS[words]._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    }
    assert has <= named, f"options missing from the help: {has - named}"
    # Every option explained in words, not only listed.
    for action in COMMANDS[words]._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{' '.join(words)} {action.option_strings} has no help text"
