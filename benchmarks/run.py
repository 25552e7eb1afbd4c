"""Benchmark a freshly generated default project through its public interfaces; one table.

    python benchmarks/run.py                  # full run, about ten minutes
    python benchmarks/run.py --quick          # about a minute: proves the harness, rough figures
    python benchmarks/run.py --template DIR   # bake from another checkout of the template
    python benchmarks/run.py --keys N         # the large registry's size (100,000; quick 5,000)
    python benchmarks/run.py --before REF --after REF [--only-refs]
                                              # the project at two template commits, side by side

Every ratio is taken side by side in one run (variants interleaved in rounds, in a
new random order each round); absolute figures move from run to run. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import large_registry
import refs
import servers
from bakes import Project, bake, create_key, flask, install, new_key, upgrade
from servers import Run, clean_env

HERE = Path(__file__).resolve().parent
HUGE_LIMIT = "1000000000/hour"  # never reached: every request is counted, none refused
HIREDIS = "hiredis==3.5.0"
PASS, MISSED, INFO, SKIPPED = "pass", "MISSED", "info", "skipped"
SECURE = "/v1/secure-data"
OWNED_VS_PLAIN = "key whose owner has a limit vs key without"
TRIPS_SAMPLE = 100  # requests over which Redis round trips are counted
LARGE, QUICK_LARGE = 100_000, 5_000  # keys in the large registry, full run and --quick
PROPAGATION = 2.0  # seconds: a change is honoured by every worker of every host within it
PROPAGATION_TIMEOUT = 10.0  # seconds: a change not seen by then is reported as never seen
CHANGE_EVERY = 0.25  # seconds between registry changes while "changing": several per refresh
MB = 1024 * 1024


@dataclass(frozen=True)
class Goal:
    """A row of wrk runs: ``variant`` against ``baseline`` in the same rounds, or a baseline.

    ``measure``: ``rps`` compares requests per second (higher is better), ``time`` the
    time per request and ``p99`` the 99th percentile latency (lower is better).
    ``needs``: what the row cannot run without (``e2e``: wrk and redis-server; ``pg``:
    those and PostgreSQL; ``refs``: wrk and redis-server, and ``--before``).
    """

    label: str
    variant: str
    baseline: str | None = None
    bound: float | None = None
    measure: str = "rps"
    info: bool = False  # the bound is a point of reference, not a goal
    needs: str = "e2e"


@dataclass(frozen=True)
class Fact:
    """A row that is not a wrk run: a start-up time, memory, a propagation time."""

    label: str
    fact: str
    bound: float | None = None
    needs: str = "pg"


ROWS = [
    Goal("e2e memory://, {memory}: GET /health", "memory health"),
    Goal(f"e2e memory://: GET {SECURE} vs /health", "memory secure", "memory health", 0.90),
    Goal("e2e redis://, {redis}: GET /health", "redis health"),
    Goal(f"e2e redis://: GET {SECURE} vs /health", "redis secure", "redis health", 0.70),
    Goal("e2e redis://, {peer}: Flask-Limiter peer, keyed", "peer secure"),
    Goal(f"e2e redis://: GET {SECURE} vs Flask-Limiter", "redis secure", "peer secure", 1.50),
    Goal(f"e2e redis://: GET {SECURE} with hiredis vs without", "hiredis secure", "pure secure"),
    Goal("e2e PostgreSQL registry, {pg}: GET /health", "pg health", needs="pg"),
    Goal(
        f"e2e PostgreSQL registry: GET {SECURE} (flask keys create) vs /health",
        "pg secure",
        "pg health",
        0.90,
        needs="pg",
    ),
    Fact("{keys} keys in PostgreSQL, {pg}: start-up, gunicorn to /health", "startup"),
    Fact("{keys} keys: memory per worker, RSS (the largest)", "memory"),
    Fact("{keys} keys: flask keys revoke until every worker refuses", "propagation", PROPAGATION),
    Goal(f"{{keys}} keys: GET {SECURE}, registry unchanged", "large quiet", needs="pg"),
    Goal(
        f"{{keys}} keys: GET {SECURE} p99, {1 / CHANGE_EVERY:.0f} revokes/s vs unchanged",
        "large changing",
        "large quiet",
        2.0,
        measure="p99",
        needs="pg",
    ),
    Goal("in process: GET /health", "inprocess health", needs=""),
    Goal(
        f"in process: GET {SECURE}, time vs /health",
        "inprocess secure",
        "inprocess health",
        1.25,
        measure="time",
        info=True,
        needs="",
    ),
    Goal(f"e2e memory://: GET {SECURE}, {OWNED_VS_PLAIN}", "memory owned", "memory plain"),
    Goal(f"e2e redis://: GET {SECURE}, {OWNED_VS_PLAIN}", "redis owned", "redis plain"),
    Goal(
        f"in process: GET {SECURE}, time, {OWNED_VS_PLAIN}",
        "inprocess owned",
        "inprocess plain",
        measure="time",
        needs="",
    ),
]


# Only with --before REF --after REF: the generated project at two commits of the template.
REF_ROWS = [
    Goal(f"e2e {{before}}, {{refs}}: POST {refs.ITEMS}", "refs post before", needs="refs"),
    Goal(
        f"e2e {{after}} vs {{before}}: POST {refs.ITEMS}",
        "refs post after",
        "refs post before",
        needs="refs",
    ),
    Goal(f"e2e {{before}}, {{refs}}: GET {refs.ITEMS}", "refs get before", needs="refs"),
    Goal(
        f"e2e {{after}} vs {{before}}: GET {refs.ITEMS}",
        "refs get after",
        "refs get before",
        needs="refs",
    ),
    Goal(
        f"in process {{after}} vs {{before}}: POST {refs.ITEMS}",
        "inprocess post after",
        "inprocess post before",
        measure="time",
        needs="refs",
    ),
    Goal(
        f"in process {{after}} vs {{before}}: GET {refs.ITEMS}",
        "inprocess get after",
        "inprocess get before",
        measure="time",
        needs="refs",
    ),
]


@dataclass(frozen=True)
class OwnerKeys:
    """Two registry keys alike but for their owners: ``owned``'s owner has a limit (never
    reached), ``plain``'s has none. The cost of owners' limits is the one against the other."""

    plain: str
    owned: str


def owner_keys(project: Project, env: dict[str, str]) -> OwnerKeys:
    """``flask keys create`` twice, ``flask keys owner-limit`` once, as an owner does."""
    plain = create_key(project, env, "plain", "--owner", "no-limit")
    owned = create_key(project, env, "owned", "--owner", "limited")
    flask(project, env, "keys", "owner-limit", "limited", HUGE_LIMIT)
    return OwnerKeys(plain, owned)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=HERE.parent, help="template directory")
    parser.add_argument("--quick", action="store_true", help="a smoke run: rough figures")
    parser.add_argument("--rounds", type=int, help="rounds of wrk runs (default 20, quick 1)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 2, quick 1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--batch", type=int, help="in-process requests per route and round")
    parser.add_argument("--keys", type=int, help=f"large registry (default {LARGE:,}, quick 5,000)")
    parser.add_argument("--starts", type=int, help="start-ups timed (default 3, quick 1)")
    parser.add_argument("--revokes", type=int, help="revokes followed (default 5, quick 1)")
    parser.add_argument("--before", help="also serve the project of this template commit ...")
    parser.add_argument("--after", help="... beside this one's (default HEAD), on /v1/items")
    parser.add_argument("--only-refs", action="store_true", help="only --before vs --after")
    arguments = parser.parse_args(argv)
    defaults = {"rounds": 20, "seconds": 2, "batch": 1000, "keys": LARGE, "starts": 3}
    defaults["revokes"] = 5
    if arguments.quick:
        defaults |= {"rounds": 1, "seconds": 1, "batch": 100, "keys": QUICK_LARGE}
        defaults |= {"starts": 1, "revokes": 1}
    for name, value in defaults.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    if (arguments.after or arguments.only_refs) and not arguments.before:
        parser.error("--after and --only-refs need --before")
    if arguments.before and not arguments.after:
        arguments.after = "HEAD"
    if arguments.keys < arguments.revokes + 1:
        parser.error("--keys must leave room for the keys it revokes and the one it loads with")
    return arguments


def shuffled(variants: dict) -> list[str]:
    """The variants in a new random order, those compared with each other back to back.

    The memory:// server's two routes form one group, the PostgreSQL-backed server's
    another, the Redis-backed servers a third: a ratio's two runs are at most a few
    seconds apart, so that a burst of other work on the machine hits both more often.
    """
    pick = secrets.SystemRandom()
    groups: dict[str, list[str]] = {}
    for name in variants:
        first = name.split()[0]
        groups.setdefault(first if first in ("memory", "pg", "large") else "redis", []).append(name)
    order = pick.sample(list(groups.values()), len(groups))
    return [name for group in order for name in pick.sample(group, len(group))]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def production(**settings: str) -> dict[str, str]:
    """The project's production settings, with limits no run reaches and quiet logs.

    Without DATABASE_URL the project uses its default, a SQLite file under
    ``instance/`` of the working directory: the project root, in the run's directory.
    """
    return clean_env(
        PYTHONPATH="src",
        APP_ENV="production",
        RATELIMIT_DEFAULT=HUGE_LIMIT,
        AUTH_FAILURE_LIMIT=HUGE_LIMIT,
        LOG_LEVEL="WARNING",
        **settings,
    )


def in_process(
    project: Project, key: str, owners: OwnerKeys, env: dict[str, str], work: Path, rounds, batch
):
    """The WSGI app from create_app(), in a process of its own (see inprocess.py), run from
    the project root, so that its default database is the project's migrated one."""
    output = work / "inprocess.json"
    command = [sys.executable, str(HERE / "inprocess.py"), project.package, project.key_header]
    subprocess.run(  # noqa: S603 - our script, fixed arguments
        [*command, key, owners.plain, owners.owned, str(rounds), str(batch), str(output)],
        cwd=project.root,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results = json.loads(output.read_text(encoding="utf-8"))
    return {f"inprocess {name}": [Run(**run) for run in runs] for name, runs in results.items()}


@dataclass
class Served:
    """A gunicorn serving the project: how to reach it, and its workers' process ids."""

    process: servers.Process
    base: str
    settings: str
    workers: list[int]


@dataclass
class Setup:
    variants: dict[str, tuple[str, dict[str, str]]]  # what wrk loads: {name: (URL, headers)}
    settings: dict[str, str]  # each server's workers, as gunicorn resolved them
    redis_uri: str
    hiredis: str  # the Redis-backed server of the project that parses with hiredis
    pg: Served | None = None
    pg_env: dict[str, str] = field(default_factory=dict)


def serve(project: Project, env: dict[str, str], log: Path, stack=None, *flags: str) -> Served:
    """gunicorn serving the project as its README says, from its root; stopped with ``stack``."""
    app = f"{project.package}:create_app()"
    settings, count = servers.gunicorn_settings(app, project.root, env, *flags)
    process, base = servers.gunicorn(app, project.root, env, log, *flags)
    if stack is not None:
        stack.callback(process.stop)
    try:
        workers = servers.booted_workers(process, count)
    except RuntimeError:
        process.stop()
        raise
    return Served(process, base, settings, workers)


def headers_for(project: Project, key: str) -> dict[str, str]:
    return {"X-Forwarded-Proto": "https", project.key_header: key}


def start_servers(
    project: Project, key: str, owners: OwnerKeys, env: dict[str, str], pg, work: Path, stack
) -> Setup:
    """redis-server, gunicorn serving the project three ways and the peer once; and, with
    PostgreSQL, a fourth time on a database of its own with a key `flask keys create` made."""
    redis, uri = servers.redis_server(shutil.which("redis-server"), work)
    stack.callback(redis.stop)
    without, with_ = servers.hiredis_paths(work, HIREDIS)
    if servers.uses_hiredis(without) or not servers.uses_hiredis(with_):
        raise RuntimeError("could not run redis-py both with and without hiredis")
    memory_env = {**env, "TRUSTED_PROXIES": "1", "REQUIRE_HTTPS": "true"}
    redis_env = {**memory_env, "RATELIMIT_STORAGE_URI": uri}
    # "redis" has this interpreter's packages as they are, "other" the other Redis parser.
    other_env = {**redis_env, "PYTHONPATH": os.pathsep.join(["src", with_ or without])}
    urls, settings = {}, {}
    for name, server_env, flags in (
        ("memory", memory_env, ["--workers", "1"]),
        ("redis", redis_env, []),
        ("other", other_env, []),
    ):
        served = serve(project, server_env, work / f"{name}.log", stack, *flags)
        urls[name], settings[name] = served.base, served.settings
    # The peer reads the project's gunicorn.conf.py: the same worker class and count (the
    # file may name a worker of the project's package, hence its src on the path). It runs
    # from a directory of the run's (gunicorn puts it on the path), so that nothing it
    # might write lands in the checkout.
    peer_env = clean_env(
        PYTHONPATH=os.pathsep.join([str(project.root / "src"), str(HERE)]),
        API_KEYS=key,
        RATELIMIT_LIMIT=HUGE_LIMIT,
        RATELIMIT_STORAGE_URI=uri,
    )
    peer_flags = ["--config", str(project.root / "gunicorn.conf.py")]
    peer_app, peer_dir = "flask_limiter_peer:app", work / "peer"
    peer_dir.mkdir()
    settings["peer"], _ = servers.gunicorn_settings(peer_app, peer_dir, peer_env, *peer_flags)
    peer, urls["peer"] = servers.gunicorn(
        peer_app, peer_dir, peer_env, peer_dir / "log", *peer_flags
    )
    stack.callback(peer.stop)
    keyed = headers_for(project, key)
    variants = {
        "memory health": (urls["memory"] + "/health", keyed),
        "memory secure": (urls["memory"] + SECURE, keyed),
        "redis health": (urls["redis"] + "/health", keyed),
        "redis secure": (urls["redis"] + SECURE, keyed),
        "other secure": (urls["other"] + SECURE, keyed),
        "peer secure": (urls["peer"] + SECURE, keyed),
    }
    for name in ("memory", "redis"):
        variants[f"{name} plain"] = (urls[name] + SECURE, headers_for(project, owners.plain))
        variants[f"{name} owned"] = (urls[name] + SECURE, headers_for(project, owners.owned))
    setup = Setup(variants, settings, uri, "other" if with_ else "redis")
    if pg is not None:
        # The registry in PostgreSQL, with the key in it (no API_KEYS), and the workers
        # gunicorn.conf.py asks for, each following the registry on its own. Rate limits
        # are counted in memory, so that the row weighs the registry, not Redis.
        setup.pg_env = {
            **env,
            "TRUSTED_PROXIES": "1",
            "REQUIRE_HTTPS": "true",
            "DATABASE_URL": pg.database("registry"),
        }
        del setup.pg_env["API_KEYS"]
        upgrade(project, setup.pg_env)
        pg_key = create_key(project, setup.pg_env, "benchmark")
        setup.pg = serve(project, setup.pg_env, work / "pg.log", stack)
        settings["pg"] = setup.pg.settings
        variants["pg health"] = (setup.pg.base + "/health", headers_for(project, pg_key))
        variants["pg secure"] = (setup.pg.base + SECURE, headers_for(project, pg_key))
    return setup


def round_trips(setup: Setup) -> dict[str, float]:
    """Redis round trips per keyed request, by Redis-backed server: the server's replies.

    Taken after the warm-up, so that the clients' connection set-up is not counted;
    a server that never asks Redis would measure nothing, and stops the run.
    """
    trips = {}
    for name, variant in (
        ("redis", "redis secure"),
        ("other", "other secure"),
        ("peer", "peer secure"),
        ("owned", "redis owned"),
    ):
        url, headers = setup.variants[variant]
        before = servers.redis_replies(setup.redis_uri)
        statuses = {servers.get(url, headers) for _ in range(TRIPS_SAMPLE)}
        replies = servers.redis_replies(setup.redis_uri) - before - 1  # less the first INFO's
        trips[name] = replies / TRIPS_SAMPLE
        if statuses != {200} or trips[name] <= 0:
            raise RuntimeError(f"{name}: GET {SECURE} answered {statuses}, {replies} Redis replies")
    return trips


def check_tools() -> str:
    """wrk's path; LookupError naming what is missing for the end-to-end rows."""
    missing = [name for name in ("wrk", "redis-server") if not shutil.which(name)]
    if missing:
        names = " ".join(missing)
        raise LookupError(f"{names.replace(' ', ' and ')} not installed (apt-get install {names})")
    return shutil.which("wrk")


def rounds_of(variants: dict, arguments, what: str, wrap=None) -> dict[str, list[Run]]:
    """Every variant under wrk once per round, in a new order each round, after a warm-up.

    ``wrap(name)``: a context manager around a variant's run (the registry changing).
    """
    wrk_path = shutil.which("wrk")

    def one(name: str, seconds: float) -> Run:
        url, headers, *script = variants[name]  # a wrk script for another method and a body
        with wrap(name) if wrap else contextlib.nullcontext():
            return servers.wrk(wrk_path, url, headers, seconds, arguments.connections, *script)

    for name in variants:  # warm-up, as the runs go: first requests fill caches
        one(name, 1)
    results: dict[str, list[Run]] = {name: [] for name in variants}
    for number in range(arguments.rounds):
        progress(f"{what}: round {number + 1} of {arguments.rounds}")
        for name in shuffled(variants):
            results[name].append(one(name, arguments.seconds))
    return results


def end_to_end(
    project: Project, key: str, owners: OwnerKeys, env: dict[str, str], pg, work: Path, arguments
):
    """Every variant under wrk, interleaved in rounds: runs by variant, settings, round trips,
    and the PostgreSQL-backed server's environment and workers' memory (for the large
    registry's rows)."""
    with contextlib.ExitStack() as stack:
        setup = start_servers(project, key, owners, env, pg, work, stack)
        trips = round_trips(setup)
        results = rounds_of(setup.variants, arguments, "end to end")
        small_memory = [servers.memory(pid) for pid in setup.pg.workers] if setup.pg else []
    pure = "redis" if setup.hiredis == "other" else "other"
    results["hiredis secure"] = results[f"{setup.hiredis} secure"]
    results["pure secure"] = results[f"{pure} secure"]
    return results, setup, trips, small_memory


def follow_revoke(project: Project, env: dict[str, str], served: Served, name: str, key: str):
    """``flask keys revoke NAME``; seconds from the revocation (as the registry recorded it)
    until each worker refuses the key, or ``inf`` for a worker that never did.

    Each worker answers in turn while the others are stopped (the kernel picks which
    worker accepts a connection); the first answer each gives after the command
    exits counts, so the time is a bound from above.
    """
    url, headers = served.base + SECURE, headers_for(project, key)
    for worker in range(len(served.workers)):
        with servers.only_worker(served.workers, worker):
            status = servers.get(url, headers)
        if status != 200:
            raise RuntimeError(f"worker {worker}: key {name!r} answered {status} before revoke")
    flask(project, env, "keys", "revoke", name)
    since = large_registry.revoked_at(env["DATABASE_URL"], name)
    reached = dict.fromkeys(range(len(served.workers)), math.inf)
    deadline = time.monotonic() + PROPAGATION_TIMEOUT
    while math.inf in reached.values() and time.monotonic() < deadline:
        for worker in [w for w, seconds in reached.items() if seconds == math.inf]:
            with servers.only_worker(served.workers, worker):
                status = servers.get(url, headers)
            if status == 401:
                reached[worker] = time.time() - since
            elif status != 200:
                raise RuntimeError(f"worker {worker}: key {name!r} answered {status}")
        time.sleep(0.01)
    return list(reached.values())


def large(project: Project, setup: Setup, pg, work: Path, arguments) -> tuple[dict, dict]:
    """A registry of ``--keys`` keys in PostgreSQL, served by gunicorn as the one-key one is:
    start-up, memory, revokes followed to every worker, latency while keys are revoked."""
    count = arguments.keys
    url = pg.database("large")
    env = {**setup.pg_env, "DATABASE_URL": url}
    upgrade(project, env)
    victims = {f"victim-{number}": new_key(project)[0] for number in range(arguments.revokes)}
    progress(f"large registry: {count:,} keys into PostgreSQL (COPY), one by flask keys create")
    large_registry.fill(url, count - 1, victims)
    load_key = create_key(project, env, "load")  # the key wrk sends: key number `count`
    facts: dict = {"startup": {"large": [], "small": []}}
    for number in range(arguments.starts):  # the two registries in turn, same settings
        progress(f"large registry: start-up {number + 1} of {arguments.starts}")
        for which, server_env in (("small", setup.pg_env), ("large", env)):
            process, _ = servers.gunicorn(
                f"{project.package}:create_app()", project.root, server_env, work / "start.log"
            )
            process.stop()
            facts["startup"][which].append(process.started_in)
    with contextlib.ExitStack() as stack:
        served = serve(project, env, work / "large.log", stack)
        progress(f"large registry: following {len(victims)} flask keys revoke to every worker")
        facts["propagation"] = [
            max(follow_revoke(project, env, served, name, key)) for name, key in victims.items()
        ]
        names = (large_registry.bulk_name(number) for number in range(count))
        changes = large_registry.Changes(url, names, CHANGE_EVERY)
        stack.callback(changes.close)
        variants = {
            "large quiet": (served.base + SECURE, headers_for(project, load_key)),
            "large changing": (served.base + SECURE, headers_for(project, load_key)),
        }
        results = rounds_of(
            variants,
            arguments,
            "large registry",
            lambda name: changes if name == "large changing" else contextlib.nullcontext(),
        )
        facts["changes"] = changes.count
        facts["memory"] = [servers.memory(pid) for pid in served.workers]
    return results, facts


def row(goal: Goal | Fact, results: dict[str, list[Run]], facts: dict, labels: dict, why: str):
    """Cells: benchmark, goal, measured, verdict, req/s, p50, p99, errors."""
    label = goal.label.format(**labels)
    if isinstance(goal, Fact):
        return fact_row(goal, label, facts, why)
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
    ratios = [ratio(goal, v, b) for v, b in zip(runs, results[goal.baseline], strict=True)]
    value = statistics.median(ratios)
    measured = f"{value:.2f}x"
    if len(ratios) > 1:  # how far the rounds spread: a verdict near its goal is "about there"
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        measured += f" (IQR {low:.2f}-{high:.2f})"
    errors += sum(run.errors for run in results[goal.baseline])
    lower = goal.measure != "rps"
    within = goal.bound is not None and (value <= goal.bound if lower else value >= goal.bound)
    verdict = INFO if goal.bound is None or goal.info else PASS if within and not errors else MISSED
    return [label, goal_text(goal), measured, verdict, *figures]


def ratio(goal: Goal, variant: Run, baseline: Run) -> float:
    """One round's ratio, from runs taken back to back."""
    if goal.measure == "time":  # time per request: the inverse of requests per second
        return baseline.rps / variant.rps
    if goal.measure == "p99":
        return variant.p99_ms / baseline.p99_ms
    return variant.rps / baseline.rps


def goal_text(goal: Goal | Fact) -> str:
    if goal.bound is None:
        return "-"
    if isinstance(goal, Fact):
        return f"<= {goal.bound:.1f} s"
    text = f"{'>=' if goal.measure == 'rps' else '<='} {goal.bound:.2f}x"
    text = f"p99 {text}" if goal.measure == "p99" else text
    return f"{text} (info)" if goal.info else text


def fact_row(fact: Fact, label: str, facts: dict, why: str) -> list[str]:
    if fact.fact not in facts:
        return [label, goal_text(fact), why, SKIPPED, *"----"]
    if fact.fact == "startup":
        times = facts["startup"]
        measured = (
            f"{statistics.median(times['large']):.2f} s "
            f"(1 key: {statistics.median(times['small']):.2f} s)"
        )
    elif fact.fact == "memory":
        largest = max(rss for rss, _ in facts["memory"]) / MB
        reference = max(rss for rss, _ in facts["memory small"]) / MB
        measured = f"{largest:.0f} MB (1 key: {reference:.0f} MB)"
    else:  # propagation
        times = facts["propagation"]
        measured = f"{statistics.median(times):.2f} s"
        if len(times) > 1:
            measured += f" (max {max(times):.2f} s of {len(times)})"
        if max(times) == math.inf:
            measured = f"not within {PROPAGATION_TIMEOUT:.0f} s"
    if fact.bound is None:
        return [label, goal_text(fact), measured, INFO, *"---", "-"]
    verdict = PASS if max(facts[fact.fact]) <= fact.bound else MISSED
    return [label, goal_text(fact), measured, verdict, *"---", "-"]


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
    names += ("sqlalchemy", "psycopg")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; {versions}; "
        f"load average before the run {load}"
    )


def notes(facts: dict, trips: dict, results: dict[str, list[Run]], arguments) -> list[str]:
    """What the table has no room for: round trips, each worker's memory, the slowest
    request, what the large registry was made of."""
    lines = []
    if trips:
        lines.append(
            f"Redis round trips per keyed request (the server's replies over {TRIPS_SAMPLE} "
            f"requests): {SECURE} {trips['redis']:.2f} (with the other parser "
            f"{trips['other']:.2f}; with a key whose owner has a limit {trips['owned']:.2f}), "
            f"Flask-Limiter {trips['peer']:.2f}."
        )
    if "memory" in facts:

        def workers(memory: list[tuple[int, int]]) -> str:
            return ", ".join(f"{rss / MB:.0f} MB ({own / MB:.0f} MB own)" for rss, own in memory)

        lines.append(
            f"Memory per worker after its runs, RSS (of which not shared with the master): "
            f"{arguments.keys:,} keys {workers(facts['memory'])}; "
            f"1 key {workers(facts['memory small'])}."
        )
    if results.get("large changing"):
        quiet, changing = results["large quiet"], results["large changing"]
        lines.append(
            f"{arguments.keys:,} keys: {facts['changes']} keys revoked during the "
            f"{len(changing)} run(s) with changes; slowest request "
            f"{max(run.max_ms for run in changing):.1f} ms with changes, "
            f"{max(run.max_ms for run in quiet):.1f} ms without (usual p99 "
            f"{statistics.median(run.p99_ms for run in quiet):.2f} ms)."
        )
    return lines


def compare_refs(pg, work: Path, arguments) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """The project at ``--before`` and at ``--after``, both served, wrk on /v1/items of
    both in the same rounds, then both in process, alternating (refs.py); each on a
    PostgreSQL database of its own when the run has a server, else on its default SQLite
    file."""
    progress(f"refs: {arguments.before} and {arguments.after}, baked, installed, served")
    envs = {}
    for label in ("before", "after"):
        envs[label] = production(TRUSTED_PROXIES="1", REQUIRE_HTTPS="true")
        if pg is not None:
            envs[label]["DATABASE_URL"] = pg.database(f"refs_{label}")
    runs, sides = refs.compare(
        arguments.template.resolve(),
        arguments.before,
        arguments.after,
        work,
        envs,
        lambda variants: rounds_of(variants, arguments, "refs"),
        lambda sides: refs.in_process(sides, 4 * arguments.rounds, arguments.batch, progress),
    )
    settings = sorted({settings for _, settings in sides.values()})
    labels = {label: f"{label} ({commit})" for label, (commit, _) in sides.items()}
    return runs, {**labels, "refs": " / ".join(settings)}


def written_outside(places: list[Path]) -> list[Path]:
    """The default database's ``instance/`` directories in ``places`` (a run must make none)."""
    return [place / "instance" for place in places if (place / "instance").exists()]


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    header = machine()  # before the run: the load average says how busy the machine was
    checkouts = [Path.cwd(), arguments.template.resolve()]
    before = written_outside(checkouts)
    labels = {name: "not run" for name in ("memory", "redis", "peer", "pg", "refs")}
    labels |= {"before": f"before ({arguments.before})", "after": f"after ({arguments.after})"}
    labels["keys"] = f"{arguments.keys:,}"
    why = dict.fromkeys(("", "e2e", "pg", "refs"), "not measured")
    trips, facts, results = {}, {}, {}
    rounds = 4 * arguments.rounds
    with tempfile.TemporaryDirectory(prefix="apikey-bench-") as directory:
        work = Path(directory)
        if not arguments.only_refs:
            progress(f"baking the default project from {arguments.template}")
            project = bake(arguments.template.resolve(), work)
            project = install(project, work)
            key, entry = new_key(project)
            env = production(API_KEYS=entry)
            progress("flask db upgrade: the default database, SQLite under the project's instance/")
            upgrade(project, env)
            owners = owner_keys(project, env)
            progress(f"in process: {rounds} rounds x {arguments.batch} requests per variant")
            results = in_process(project, key, owners, env, work, rounds, arguments.batch)
        with contextlib.ExitStack() as stack:
            try:
                check_tools()
                try:
                    pg = stack.enter_context(servers.postgres_server())
                except LookupError as error:
                    pg, why["pg"] = None, str(error)
                    progress(f"PostgreSQL rows SKIPPED: {why['pg']}")
                if not arguments.only_refs:
                    progress(
                        "end to end: starting redis-server, PostgreSQL's database and gunicorn"
                    )
                    runs, setup, trips, facts["memory small"] = end_to_end(
                        project, key, owners, env, pg, work, arguments
                    )
                    results |= runs
                    labels |= setup.settings
                    if pg is not None:
                        runs, more = large(project, setup, pg, work, arguments)
                        results |= runs
                        facts |= more
                if arguments.before:
                    runs, sides = compare_refs(pg, work, arguments)
                    results |= runs
                    labels |= sides
            except LookupError as error:
                why["e2e"] = why["pg"] = why["refs"] = str(error)
                progress(f"end to end SKIPPED: {why['e2e']}")
    strays = sorted(set(written_outside(checkouts)) - set(before))
    if strays:
        raise RuntimeError(f"the run wrote outside its directory: {', '.join(map(str, strays))}")
    goals = ([] if arguments.only_refs else ROWS) + (REF_ROWS if arguments.before else [])
    rows = [row(goal, results, facts, labels, why[goal.needs]) for goal in goals]
    print("# Benchmarks of the default generated project\n")
    print(f"Machine: {header}.")
    settings = (
        f"Settings as in README.md; wrk: 1 thread, {arguments.connections} connections, "
        f"{arguments.seconds} s per run, {arguments.rounds} round(s)"
    )
    if not arguments.only_refs:
        settings += (
            f"; in process: {rounds} rounds x {arguments.batch} requests per variant; {HIREDIS} "
            f"for the hiredis row; large registry: {arguments.keys:,} keys, "
            f"{arguments.starts} start-up(s), {arguments.revokes} revoke(s) followed"
        )
    if arguments.before:
        settings += (
            f"; before/after in process: {4 * arguments.rounds} rounds x {arguments.batch} "
            "requests per route and side"
        )
    print(settings + ".\n")
    print(table(rows))
    for line in notes(facts, trips, results, arguments):
        print(f"\n{line}")
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
