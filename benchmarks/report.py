"""Rows of the results table, the statistics behind them, and the machine they ran on."""

from __future__ import annotations

import math
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

PASS, MISSED, INFO, SKIPPED = "pass", "MISSED", "info", "skipped"
_random = secrets.SystemRandom()


@dataclass
class Row:
    """One line of the table: what was measured, the goal (if any), what came out."""

    section: str
    name: str
    goal: str
    measured: str
    verdict: str


def verdict(ok: bool) -> str:
    return PASS if ok else MISSED


def shuffled(items) -> list:
    """The items in a new random order (each round of a benchmark runs in its own order)."""
    items = list(items)
    _random.shuffle(items)
    return items


def median(values) -> float:
    return statistics.median(values)


def mann_whitney(first: list[float], second: list[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test, normal approximation with tie correction.

    Returns (z, p). For the thousands of samples taken here the approximation is
    exact enough; no SciPy needed.
    """
    n1, n2 = len(first), len(second)
    pooled = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    rank_sum = 0.0
    tie_term = 0.0
    index = 0
    while index < len(pooled):
        end = index
        while end + 1 < len(pooled) and pooled[end + 1][0] == pooled[index][0]:
            end += 1
        average_rank = (index + end) / 2 + 1  # ranks start at 1
        ties = end - index + 1
        tie_term += ties**3 - ties
        rank_sum += average_rank * sum(1 for _, group in pooled[index : end + 1] if group == 0)
        index = end + 1
    u = rank_sum - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return 0.0, 1.0
    z = (u - n1 * n2 / 2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def us(nanoseconds: float) -> str:
    """A duration in microseconds, for the table."""
    return f"{nanoseconds / 1000:.1f} µs"


def ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


# The machine


def cpu_model() -> str:
    """lscpu's "Model name", or the best the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    result = subprocess.run(  # noqa: S603 - a fixed argument list
        [wrk, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    words = (result.stdout + result.stderr).split()
    return words[1] if len(words) > 1 else "unknown version"


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines() -> list[str]:
    """Where and with what the figures were taken."""
    packages = ", ".join(
        f"{name} {version_of(name)}"
        for name in ("flask", "werkzeug", "limits", "gunicorn", "flask-limiter", "flask-httpauth")
    )
    return [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {memory()}, "
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()} ({sys.implementation.name}); {packages}; "
        f"wrk {wrk_version() or 'not installed'}",
        f"Load average before the run: {load_average()} (other work on the machine adds noise)",
    ]


def table(rows: list[Row]) -> str:
    """The rows as one Markdown table, readable in a terminal and pasteable into a README."""
    header = ("benchmark", "goal", "measured", "verdict")
    cells = [header] + [
        (f"{row.section}: {row.name}", row.goal, row.measured, row.verdict) for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]

    def line(values) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator, *(line(values) for values in cells[1:])])
