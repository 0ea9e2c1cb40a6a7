"""Shared by the security tests: a tally of the fuzz cases, printed at the end of the run."""

from __future__ import annotations

from collections import Counter

import pytest

Tally = Counter[tuple[str, str, str]]
"""(operation, "auth mode/generation mode", status code) -> cases sent."""

FUZZ_TALLY = pytest.StashKey[Tally]()


@pytest.fixture(scope="session")
def fuzz_tally(request: pytest.FixtureRequest) -> Tally:
    return request.config.stash.setdefault(FUZZ_TALLY, Counter())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tally = terminalreporter.config.stash.get(FUZZ_TALLY, None)
    if not tally:
        return
    terminalreporter.section("API fuzz cases")
    operations = sorted({operation for operation, _, _ in tally})
    for operation in operations:
        cases = {(kind, status): n for (op, kind, status), n in tally.items() if op == operation}
        total = sum(cases.values())
        detail = ", ".join(f"{kind} {status}: {n}" for (kind, status), n in sorted(cases.items()))
        terminalreporter.write_line(f"{operation}: {total} cases ({detail})")
