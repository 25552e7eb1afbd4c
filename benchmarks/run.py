"""Benchmark a freshly generated default project through its public interfaces; one table.

    python benchmarks/run.py                  # full run, about five minutes
    python benchmarks/run.py --quick          # under a minute: proves the harness, rough figures
    python benchmarks/run.py --template DIR   # bake from another checkout of the template

Every ratio is taken side by side in one run (variants interleaved in rounds, in a
new random order each round); absolute figures move from run to run. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import servers
from bakes import Project, bake, new_key
from servers import Run, clean_env

HERE = Path(__file__).resolve().parent
HUGE_LIMIT = "1000000000/hour"  # never reached: every request is counted, none refused
HIREDIS = "hiredis==3.5.0"
PASS, MISSED, INFO, SKIPPED = "pass", "MISSED", "info", "skipped"
SECURE = "/v1/secure-data"
TRIPS_SAMPLE = 100  # requests over which Redis round trips are counted


@dataclass(frozen=True)
class Goal:
    """A row: ``variant`` against ``baseline`` in the same rounds, or a baseline alone."""

    label: str
    variant: str
    baseline: str | None = None
    bound: float | None = None
    cost: bool = False  # compare time per request (lower is better), not throughput
    info: bool = False  # the bound is a point of reference, not a goal


GOALS = [
    Goal("e2e memory://, {memory}: GET /health", "memory health"),
    Goal(f"e2e memory://: GET {SECURE} vs /health", "memory secure", "memory health", 0.90),
    Goal("e2e redis://, {redis}: GET /health", "redis health"),
    Goal(f"e2e redis://: GET {SECURE} vs /health", "redis secure", "redis health", 0.70),
    Goal("e2e redis://, {peer}: Flask-Limiter peer, keyed", "peer secure"),
    Goal(f"e2e redis://: GET {SECURE} vs Flask-Limiter", "redis secure", "peer secure", 1.50),
    Goal(f"e2e redis://: GET {SECURE} with hiredis vs without", "hiredis secure", "pure secure"),
    Goal("in process: GET /health", "inprocess health"),
    Goal(
        f"in process: GET {SECURE}, time vs /health",
        "inprocess secure",
        "inprocess health",
        1.25,
        cost=True,
        info=True,
    ),
]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=HERE.parent, help="template directory")
    parser.add_argument("--quick", action="store_true", help="a smoke run: rough figures")
    parser.add_argument("--rounds", type=int, help="rounds of wrk runs (default 20, quick 1)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 2, quick 1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--batch", type=int, help="in-process requests per route and round")
    arguments = parser.parse_args(argv)
    quick = {"rounds": 1, "seconds": 1, "batch": 100} if arguments.quick else {}
    for name, value in {"rounds": 20, "seconds": 2, "batch": 1000, **quick}.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    return arguments


def shuffled(variants: dict[str, str]) -> list[str]:
    """The variants in a new random order, those compared with each other run back to back.

    The memory:// server's two routes form one group, the Redis-backed servers
    another: a ratio's two runs are at most a few seconds apart, so that a burst of
    other work on the machine hits both more often.
    """
    pick = secrets.SystemRandom()
    groups = [[name for name in variants if name.startswith("memory")]]
    groups.append([name for name in variants if not name.startswith("memory")])
    return [name for group in pick.sample(groups, 2) for name in pick.sample(group, len(group))]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def production(entry: str, work: Path, **settings: str) -> dict[str, str]:
    """The project's production settings, with limits no run reaches and quiet logs."""
    return clean_env(
        PYTHONPATH="src",
        APP_ENV="production",
        API_KEYS=entry,
        API_KEYS_FILE=str(work / "no-registry.toml"),
        RATELIMIT_DEFAULT=HUGE_LIMIT,
        AUTH_FAILURE_LIMIT=HUGE_LIMIT,
        LOG_LEVEL="WARNING",
        **settings,
    )


def in_process(project: Project, key: str, entry: str, work: Path, rounds: int, batch: int):
    """The WSGI app from create_app(), in a process of its own (see inprocess.py)."""
    output = work / "inprocess.json"
    command = [sys.executable, str(HERE / "inprocess.py"), project.package, project.key_header]
    subprocess.run(  # noqa: S603 - our script, fixed arguments
        [*command, key, str(rounds), str(batch), str(output)],
        cwd=project.root,
        env=production(entry, work),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results = json.loads(output.read_text(encoding="utf-8"))
    return {f"inprocess {name}": [Run(**run) for run in runs] for name, runs in results.items()}


@dataclass
class Setup:
    variants: dict[str, str]  # what wrk loads: {name: URL}
    headers: dict[str, str]  # what wrk sends with every request
    settings: dict[str, str]  # each server's workers, as gunicorn resolved them
    redis_uri: str
    hiredis: str  # the Redis-backed server of the project that parses with hiredis


def start_servers(project: Project, key: str, entry: str, work: Path, stack) -> Setup:
    """redis-server, and gunicorn serving the project three ways and the peer once."""
    redis, uri = servers.redis_server(shutil.which("redis-server"), work)
    stack.callback(redis.stop)
    without, with_ = servers.hiredis_paths(work, HIREDIS)
    if servers.uses_hiredis(without) or not servers.uses_hiredis(with_):
        raise RuntimeError("could not run redis-py both with and without hiredis")
    app = f"{project.package}:create_app()"
    memory_env = production(entry, work, TRUSTED_PROXIES="1", REQUIRE_HTTPS="true")
    redis_env = {**memory_env, "RATELIMIT_STORAGE_URI": uri}
    # "redis" has this interpreter's packages as they are, "other" the other Redis parser.
    other_env = {**redis_env, "PYTHONPATH": os.pathsep.join(["src", with_ or without])}
    # The peer reads the project's gunicorn.conf.py: the same worker class and count (the
    # file may name a worker of the project's package, hence its src on the path).
    peer_env = clean_env(
        PYTHONPATH=str(project.root / "src"),
        API_KEYS=key,
        RATELIMIT_LIMIT=HUGE_LIMIT,
        RATELIMIT_STORAGE_URI=uri,
    )
    peer_flags = ["--config", str(project.root / "gunicorn.conf.py")]
    apps = {  # name: (directory, app, environment, flags)
        "memory": (project.root, app, memory_env, ["--workers", "1"]),
        "redis": (project.root, app, redis_env, []),
        "other": (project.root, app, other_env, []),
        "peer": (HERE, "flask_limiter_peer:app", peer_env, peer_flags),
    }
    urls, settings = {}, {}
    for name, (cwd, target, env, flags) in apps.items():
        settings[name] = servers.gunicorn_settings(target, cwd, env, *flags)
        process, urls[name] = servers.gunicorn(target, cwd, env, work / f"{name}.log", *flags)
        stack.callback(process.stop)
    headers = {"X-Forwarded-Proto": "https", project.key_header: key}
    variants = {
        "memory health": urls["memory"] + "/health",
        "memory secure": urls["memory"] + SECURE,
        "redis health": urls["redis"] + "/health",
        "redis secure": urls["redis"] + SECURE,
        "other secure": urls["other"] + SECURE,
        "peer secure": urls["peer"] + SECURE,
    }
    return Setup(variants, headers, settings, uri, "other" if with_ else "redis")


def round_trips(setup: Setup) -> dict[str, float]:
    """Redis round trips per keyed request, by Redis-backed server: the server's replies.

    Taken after the warm-up, so that the clients' connection set-up is not counted;
    a server that never asks Redis would measure nothing, and stops the run.
    """
    trips = {}
    for name in ("redis", "other", "peer"):
        url = setup.variants[f"{name} secure"]
        before = servers.redis_replies(setup.redis_uri)
        statuses = {servers.get(url, setup.headers) for _ in range(TRIPS_SAMPLE)}
        replies = servers.redis_replies(setup.redis_uri) - before - 1  # less the first INFO's
        trips[name] = replies / TRIPS_SAMPLE
        if statuses != {200} or trips[name] <= 0:
            raise RuntimeError(f"{name}: GET {SECURE} answered {statuses}, {replies} Redis replies")
    return trips


def end_to_end(project: Project, key: str, entry: str, work: Path, arguments) -> tuple:
    """Every variant under wrk, interleaved in rounds: runs by variant, settings, round trips."""
    missing = [name for name in ("wrk", "redis-server") if not shutil.which(name)]
    if missing:
        names = " ".join(missing)
        raise LookupError(f"{names.replace(' ', ' and ')} not installed (apt-get install {names})")
    wrk_path, load = shutil.which("wrk"), (arguments.seconds, arguments.connections)
    with contextlib.ExitStack() as stack:
        setup = start_servers(project, key, entry, work, stack)
        for url in setup.variants.values():  # warm-up: first requests fill caches
            servers.wrk(wrk_path, url, setup.headers, 1, arguments.connections)
        trips = round_trips(setup)
        results: dict[str, list[Run]] = {name: [] for name in setup.variants}
        for number in range(arguments.rounds):
            progress(f"end to end: round {number + 1} of {arguments.rounds}")
            for name in shuffled(setup.variants):
                results[name].append(
                    servers.wrk(wrk_path, setup.variants[name], setup.headers, *load)
                )
    pure = "redis" if setup.hiredis == "other" else "other"
    results["hiredis secure"] = results[f"{setup.hiredis} secure"]
    results["pure secure"] = results[f"{pure} secure"]
    return results, setup.settings, trips


def row(goal: Goal, results: dict[str, list[Run]], settings: dict[str, str], why: str):
    """Cells: benchmark, goal, measured, verdict, req/s, p50, p99, errors."""
    label = goal.label.format(**settings)
    runs = results.get(goal.variant)
    if not runs:
        return [label, goal_text(goal) if goal.baseline else "baseline", why, SKIPPED, *"----"]
    errors = sum(run.errors for run in runs)
    figures = [
        f"{statistics.median(run.rps for run in runs):,.0f}",
        f"{statistics.median(run.p50_ms for run in runs):.2f} ms",
        f"{statistics.median(run.p99_ms for run in runs):.2f} ms",
        str(errors),
    ]
    if goal.baseline is None:
        return [label, "baseline", "-", INFO, *figures]
    pairs = zip(runs, results[goal.baseline], strict=True)  # the same rounds
    ratios = [b.rps / v.rps if goal.cost else v.rps / b.rps for v, b in pairs]
    value = statistics.median(ratios)
    measured = f"{value:.2f}x"
    if len(ratios) > 1:  # how far the rounds spread: a verdict near its goal is "about there"
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        measured += f" (IQR {low:.2f}-{high:.2f})"
    errors += sum(run.errors for run in results[goal.baseline])
    within = goal.bound is not None and (value <= goal.bound if goal.cost else value >= goal.bound)
    verdict = INFO if goal.bound is None or goal.info else PASS if within and not errors else MISSED
    return [label, goal_text(goal), measured, verdict, *figures]


def goal_text(goal: Goal) -> str:
    if goal.bound is None:
        return "-"
    text = f"{'<=' if goal.cost else '>='} {goal.bound:.2f}x"
    return f"{text} (info)" if goal.info else text


def table(rows: list[list[str]]) -> str:
    header = ["benchmark", "goal", "measured", "verdict", "req/s", "p50", "p99", "errors"]
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *map(line, rows)])


def machine() -> str:
    """The CPU, the versions that matter, and how busy the machine was."""
    cpu = platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), cpu)
    names = ("flask", "werkzeug", "limits", "redis", "gunicorn", "flask-limiter")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; {versions}; "
        f"load average before the run {load}"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    header = machine()  # before the run: the load average says how busy the machine was
    settings = {name: "not run" for name in ("memory", "redis", "peer")}
    skipped, trips = "not measured", {}
    with tempfile.TemporaryDirectory(prefix="apikey-bench-") as directory:
        work = Path(directory)
        progress(f"baking the default project from {arguments.template}")
        project = bake(arguments.template.resolve(), work)
        key, entry = new_key(project)
        rounds = 4 * arguments.rounds
        progress(f"in process: {rounds} rounds x {arguments.batch} requests per route")
        results = in_process(project, key, entry, work, rounds, arguments.batch)
        progress("end to end: starting redis-server and gunicorn (and hiredis for one of them)")
        try:
            runs, settings, trips = end_to_end(project, key, entry, work, arguments)
            results |= runs
        except LookupError as error:
            skipped = str(error)
            progress(f"end to end SKIPPED: {skipped}")
    rows = [row(goal, results, settings, skipped) for goal in GOALS]
    print("# Benchmarks of the default generated project\n")
    print(f"Machine: {header}.")
    print(
        f"Settings as in README.md; wrk: 1 thread, {arguments.connections} connections, "
        f"{arguments.seconds} s per run, {arguments.rounds} round(s); in process: {rounds} "
        f"rounds x {arguments.batch} requests per route; {HIREDIS} for the hiredis row.\n"
    )
    print(table(rows))
    if trips:
        print(
            f"\nRedis round trips per keyed request (the server's replies over {TRIPS_SAMPLE} "
            f"requests): {SECURE} {trips['redis']:.2f} (with the other parser "
            f"{trips['other']:.2f}), Flask-Limiter {trips['peer']:.2f}."
        )
    missed = sum(cells[3] == MISSED for cells in rows)
    skipped_rows = sum(cells[3] == SKIPPED for cells in rows)
    errors = sum(cells[7] not in ("0", "-") for cells in rows)
    print(
        "\n"
        + (f"{missed} goal(s) missed" if missed else "No goal missed")
        + (f"; {skipped_rows} row(s) SKIPPED" if skipped_rows else "")
        + (f"; ERRORS (non-2xx or socket) in {errors} row(s): rerun" if errors else "")
        + f" ({'--quick: rough figures, ' if arguments.quick else ''}"
        f"{time.perf_counter() - started:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
