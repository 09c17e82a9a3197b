"""Benchmarks: ``pytest benchmarks --benchmark-enable``. Ratios against a baseline measured
in the same run are printed at the end and kept in each benchmark's ``extra_info``."""

from __future__ import annotations

import pytest

RATIOS: list[str] = []


@pytest.fixture
def report():
    """Append a line to the summary printed after the benchmarks."""
    return RATIOS.append


def pytest_terminal_summary(terminalreporter):
    if RATIOS:
        terminalreporter.section("certbench ratios")
        for line in RATIOS:
            terminalreporter.write_line(line)
