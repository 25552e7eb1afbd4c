"""The benchmark suite runs and reports; its figures are measured, never asserted here."""

from __future__ import annotations

import sys

import pytest

from bakery import TEMPLATE_DIR, output, run

pytestmark = pytest.mark.slow


def test_quick_benchmark_run_prints_the_table():
    """`benchmarks/run.py --quick --no-e2e` bakes, measures and prints one table."""
    result = run(
        [sys.executable, "benchmarks/run.py", "--quick", "--no-e2e"], cwd=TEMPLATE_DIR, timeout=120
    )
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    header = next((line for line in lines if line.startswith("| benchmark")), "")
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "benchmark",
        "goal",
        "measured",
        "verdict",
    ], output(result)
    for section in ("auth:", "keys:", "timing:", "template:"):
        assert any(line.startswith(f"| {section}") for line in lines), output(result)
    assert any(line.startswith("Machine: ") for line in lines), output(result)
