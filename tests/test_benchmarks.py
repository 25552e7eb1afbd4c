"""The benchmark harness bakes, serves, loads and reports every row; verdicts are not asserted."""

from __future__ import annotations

import math
import re
import shutil
import sys

import pytest

from bakery import TEMPLATE_DIR, output, run

pytestmark = pytest.mark.slow

SECURE = "GET /v1/secure-data"
# Each row's label: how it starts and how it ends (the middle names the worker settings).
ROWS = [
    ("e2e memory://", "GET /health"),
    ("e2e memory://", f"{SECURE} vs /health"),
    ("e2e redis://", "GET /health"),
    ("e2e redis://", f"{SECURE} vs /health"),
    ("e2e redis://", "Flask-Limiter peer, keyed"),
    ("e2e redis://", f"{SECURE} vs Flask-Limiter"),
    ("e2e redis://", f"{SECURE} with hiredis vs without"),
    ("in process", "GET /health"),
    ("in process", f"{SECURE}, time vs /health"),
]


def figure(text: str, unit: str = "") -> float:
    """A positive, finite number from a cell such as ``1,234``, ``0.93x`` or ``2.10 ms``."""
    match = re.fullmatch(rf"([0-9][0-9,]*(?:\.[0-9]+)?){re.escape(unit)}", text)
    assert match, f"not a figure in {unit or 'req/s'}: {text!r}"
    value = float(match.group(1).replace(",", ""))
    assert math.isfinite(value) and value > 0, text
    return value


def test_quick_run_prints_every_row_with_its_figures():
    """`benchmarks/run.py --quick` measures each row; no request is refused or lost."""
    result = run([sys.executable, "benchmarks/run.py", "--quick"], cwd=TEMPLATE_DIR, timeout=600)
    assert result.returncode == 0, output(result)
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    assert header == ["benchmark", "goal", "measured", "verdict", "req/s", "p50", "p99", "errors"]
    assert len(rows) == len(ROWS), output(result)
    tools = shutil.which("wrk") and shutil.which("redis-server")
    for (start, end), (label, goal, measured, verdict, rps, p50, p99, errors) in zip(
        ROWS, rows, strict=True
    ):
        assert label.startswith(start) and label.endswith(end), label
        if label.startswith("e2e") and not tools:
            assert verdict == "skipped" and "not installed" in measured, label
            continue
        assert figure(rps) and figure(p99, " ms") >= figure(p50, " ms"), label
        assert errors == "0", f"{label}: {errors} requests refused or failed\n{output(result)}"
        if goal == "baseline":
            assert (measured, verdict) == ("-", "info"), label
        else:
            ratio = measured.split(" (IQR ")[0]  # one round in --quick: no spread to show
            assert figure(ratio, "x") and verdict in {"pass", "MISSED", "info"}, label
    if not tools:
        pytest.skip("wrk or redis-server missing: the end-to-end rows were checked as skipped")
