"""The fault suite's ledger: each test records events in vs out; a table ends the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest


@dataclass
class FaultRow:
    fault: str
    events_in: int  # committed (or offered, for input faults), counted by id or seq
    events_out: int  # distinct ids the deduplicating consumer received (or stored)
    duplicates: int
    lost: int
    note: str = ""


@dataclass
class FaultReport:
    rows: list[FaultRow] = field(default_factory=list)
    # Rows made at the end of the run from what actually ran (a test file's own tally), so
    # that no row depends on the order the tests ran in or on which of them were selected.
    at_end: list[Callable[[], FaultRow | None]] = field(default_factory=list)

    def add(
        self,
        fault: str,
        *,
        events_in: int,
        events_out: int,
        duplicates: int = 0,
        lost: int,
        note: str = "",
    ) -> None:
        self.rows.append(FaultRow(fault, events_in, events_out, duplicates, lost, note))


_REPORT = FaultReport()


@pytest.fixture
def fault_report() -> FaultReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for make in _REPORT.at_end:
        row = make()
        if row is not None:
            _REPORT.rows.append(row)
    _REPORT.at_end.clear()
    if not _REPORT.rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite: events in vs out")
    write(f"{'fault':<44} {'in':>8} {'out':>8} {'dups':>6} {'lost':>5}  note")
    for row in _REPORT.rows:
        write(
            f"{row.fault:<44} {row.events_in:>8} {row.events_out:>8} {row.duplicates:>6} "
            f"{row.lost:>5}  {row.note}"
        )
