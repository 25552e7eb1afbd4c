"""The benchmark harness bakes, serves, loads and reports every row; verdicts are not asserted."""

from __future__ import annotations

import math
import re
import shutil
import sys

import pytest
from postgres import in_ci

from bakery import TEMPLATE_DIR, output, run

pytestmark = pytest.mark.slow

SECURE = "GET /v1/secure-data"
OWNED_VS_PLAIN = "key whose owner has a limit vs key without"
QUICK_KEYS = "5,000 keys"  # the large registry's size in --quick
# Each row's label: how it starts and how it ends (the middle names the worker settings),
# and what it needs beyond this interpreter: "e2e" wrk and redis-server, "pg" PostgreSQL too.
ROWS = [
    ("e2e memory://", "GET /health", "e2e"),
    ("e2e memory://", f"{SECURE} vs /health", "e2e"),
    ("e2e redis://", "GET /health", "e2e"),
    ("e2e redis://", f"{SECURE} vs /health", "e2e"),
    ("e2e redis://", "Flask-Limiter peer, keyed", "e2e"),
    ("e2e redis://", f"{SECURE} vs Flask-Limiter", "e2e"),
    ("e2e redis://", f"{SECURE} with hiredis vs without", "e2e"),
    ("e2e PostgreSQL registry", "GET /health", "pg"),
    ("e2e PostgreSQL registry", f"{SECURE} (flask keys create) vs /health", "pg"),
    (f"{QUICK_KEYS} in PostgreSQL", "start-up, gunicorn to /health", "pg"),
    (QUICK_KEYS, "memory per worker, RSS (the largest)", "pg"),
    (QUICK_KEYS, "flask keys revoke until every worker refuses", "pg"),
    (QUICK_KEYS, f"{SECURE}, registry unchanged", "pg"),
    (QUICK_KEYS, f"{SECURE} p99, 4 revokes/s vs unchanged", "pg"),
    ("in process", "GET /health", ""),
    ("in process", f"{SECURE}, time vs /health", ""),
    ("e2e memory://", f"{SECURE}, {OWNED_VS_PLAIN}", "e2e"),
    ("e2e redis://", f"{SECURE}, {OWNED_VS_PLAIN}", "e2e"),
    ("in process", f"{SECURE}, time, {OWNED_VS_PLAIN}", ""),
]
# Rows not measured by wrk, by how their label ends: their figures are in "measured".
FACTS = {
    ROWS[9][1]: re.compile(r"(?P<value>[0-9.]+) s \(1 key: (?P<reference>[0-9.]+) s\)"),
    ROWS[10][1]: re.compile(r"(?P<value>[0-9]+) MB \(1 key: (?P<reference>[0-9]+) MB\)"),
    ROWS[11][1]: re.compile(r"(?P<value>[0-9.]+) s"),  # one revoke in --quick
}


def figure(text: str, unit: str = "") -> float:
    """A positive, finite number from a cell such as ``1,234``, ``0.93x`` or ``2.10 ms``."""
    match = re.fullmatch(rf"([0-9][0-9,]*(?:\.[0-9]+)?){re.escape(unit)}", text)
    assert match, f"not a figure in {unit or 'req/s'}: {text!r}"
    value = float(match.group(1).replace(",", ""))
    assert math.isfinite(value) and value > 0, text
    return value


def test_quick_run_prints_every_row_with_its_figures():
    """`benchmarks/run.py --quick` measures each row; no request is refused or lost, a
    revoked key is refused by every worker, and nothing lands in the checkout."""
    stray = TEMPLATE_DIR / "instance"  # where a project's default database would go
    had_stray = stray.exists()
    result = run([sys.executable, "benchmarks/run.py", "--quick"], cwd=TEMPLATE_DIR, timeout=600)
    assert result.returncode == 0, output(result)
    assert had_stray or not stray.exists(), "the run made a database in the checkout"
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    assert header == ["benchmark", "goal", "measured", "verdict", "req/s", "p50", "p99", "errors"]
    assert len(rows) == len(ROWS), output(result)
    tools = shutil.which("wrk") and shutil.which("redis-server")
    skipped = set()
    for (start, end, needs), cells in zip(ROWS, rows, strict=True):
        label, goal, measured, verdict, rps, p50, p99, errors = cells
        assert label.startswith(start) and label.endswith(end), label
        if verdict == "skipped":
            # Only for want of a tool, and never in CI, where .ci/run installs them all.
            assert needs and "not installed" in measured, cells
            assert needs == "pg" or not tools, cells
            assert not in_ci(), f"{label}: skipped in CI\n{output(result)}"
            skipped.add(measured)
            continue
        assert tools or not needs, f"{label}: measured without wrk and redis-server"
        fact = FACTS.get(end)
        if fact is not None:
            match = fact.fullmatch(measured)
            assert match, f"{label}: {measured!r}\n{output(result)}"
            assert figure(match["value"]) and (fact.groups == 1 or figure(match["reference"]))
            assert [rps, p50, p99, errors] == ["-"] * 4, cells
            assert verdict in ({"info"} if goal == "-" else {"pass", "MISSED"}), cells
            continue
        assert figure(rps) and figure(p99, " ms") >= figure(p50, " ms"), label
        assert errors == "0", f"{label}: {errors} requests refused or failed\n{output(result)}"
        if goal == "baseline":
            assert (measured, verdict) == ("-", "info"), label
        else:
            ratio = measured.split(" (IQR ")[0]  # one round in --quick: no spread to show
            assert figure(ratio, "x") and verdict in {"pass", "MISSED", "info"}, label
    if tools and not skipped:
        assert "Memory per worker after its runs" in result.stdout, output(result)
    if skipped:
        pytest.skip("; ".join(sorted(skipped)) + ": those rows were checked as skipped")


def test_refs_rows_serve_two_commits_side_by_side():
    """`--before REF --after REF --only-refs`: the project of each commit is baked from git,
    served and loaded on POST and GET /v1/items, then called in process on the same
    routes; every request succeeds, and only those rows are printed."""
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=TEMPLATE_DIR).stdout.strip()
    assert commit, "the template is not a git checkout"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--before", "HEAD", "--only-refs"]
    result = run(command, cwd=TEMPLATE_DIR, timeout=600)
    assert result.returncode == 0, output(result)
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    labels = [cells[0] for cells in rows]
    assert len(rows) == 6, output(result)
    assert labels[0].startswith(f"e2e before ({commit}), ") and labels[0].endswith("POST /v1/items")
    assert labels[1] == f"e2e after ({commit}) vs before ({commit}): POST /v1/items", labels
    assert labels[3] == f"e2e after ({commit}) vs before ({commit}): GET /v1/items", labels
    sides = f"after ({commit}) vs before ({commit})"
    assert labels[4:] == [f"in process {sides}: {route} /v1/items" for route in ("POST", "GET")]
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        assert not in_ci(), output(result)
        assert all(cells[3] == "skipped" for cells in rows), output(result)
        pytest.skip("wrk or redis-server not installed: the rows were checked as skipped")
    for label, goal, measured, verdict, rps, p50, p99, errors in rows:
        assert figure(rps) and figure(p99, " ms") >= figure(p50, " ms"), label
        assert errors == "0", f"{label}: {errors} requests refused or failed\n{output(result)}"
        if goal == "baseline":
            assert (measured, verdict) == ("-", "info"), label
        else:  # in process: four rounds in --quick, so a spread
            assert figure(measured.split(" (IQR ")[0], "x") and verdict == "info", label
            assert label.startswith("e2e") or " (IQR " in measured, label
