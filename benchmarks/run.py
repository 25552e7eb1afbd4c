"""Run every benchmark of the template and print one table: goal, measured, verdict.

    python benchmarks/run.py            # the full run (a few minutes)
    python benchmarks/run.py --quick    # a short smoke run; its figures are rough
    python benchmarks/run.py --suite    # also time the template's whole test suite

Each figure is a ratio measured side by side in this run, on freshly generated
default projects; absolute times are shown for reference only (they move from
run to run on a shared machine, ratios much less). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import bakes
import endtoend
import inprocess
from report import MISSED, machine_lines, table

SCALE_SIZES = [1, 1_000, 100_000]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (rough figures)")
    parser.add_argument("--no-e2e", action="store_true", help="skip gunicorn + wrk")
    parser.add_argument("--suite", action="store_true", help="also time `python -m pytest -q`")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print where the secured route's time goes (cProfile)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="fresh processes for the in-process auth rows (default 3, quick 1)",
    )
    parser.add_argument(
        "--rounds", type=int, help="in-process rounds, in each process (default 60, quick 4)"
    )
    parser.add_argument(
        "--batch", type=int, help="requests per variant per round (default 200, quick 30)"
    )
    parser.add_argument(
        "--samples", type=int, help="timing-leak samples per group (default 30000, quick 2000)"
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--e2e-rounds", type=int, help="rounds of wrk runs, one per route (default 8, quick 1)"
    )
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    defaults = {
        "processes": 1 if quick else 3,
        "rounds": 4 if quick else 60,
        "batch": 30 if quick else 200,
        "samples": 2_000 if quick else 30_000,
        "duration": 1 if quick else 3,
        "e2e_rounds": 1 if quick else 8,
    }
    for name, value in defaults.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    return arguments


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def output_to(log: Path):
    """Send this process's stdout (and its children's: cookiecutter's hooks) to ``log``."""
    sys.stdout.flush()
    saved = os.dup(1)
    with log.open("ab") as handle:
        os.dup2(handle.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    machine = machine_lines()  # before the run: the load average says how busy it was
    rows = []
    with tempfile.TemporaryDirectory(prefix="apikey-bench-") as directory:
        work = Path(directory)
        hook_log = work / "generation.log"
        progress("generating two default projects (rate limiting on, and off)")
        with output_to(hook_log):
            limited = bakes.bake(work, bakes.LIMITED, "limited")
            plain = bakes.bake(work, bakes.PLAIN, "plain")

        progress(
            f"auth overhead: {arguments.processes} process(es) x {arguments.rounds} rounds x "
            f"{arguments.batch} requests"
        )
        rows += inprocess.auth_overhead(
            limited, plain, work, arguments.rounds, arguments.batch, arguments.processes
        )
        profile = (
            inprocess.profile_secured(
                inprocess.build_apps(limited, plain, work), limited.package_name, 3000
            )
            if arguments.profile
            else None
        )

        progress(f"scale in keys: {', '.join(f'{size:,}' for size in SCALE_SIZES)}")
        rows += inprocess.key_scale(limited, SCALE_SIZES, arguments.rounds, arguments.batch * 10)

        progress(f"timing leak: {arguments.samples:,} samples per key")
        rows += inprocess.timing_leak(limited, arguments.samples)

        load = endtoend.Load(
            arguments.duration, arguments.threads, arguments.connections, arguments.e2e_rounds
        )
        if not arguments.no_e2e:
            progress("end to end: gunicorn + wrk on 127.0.0.1")
            rows += endtoend.end_to_end(limited, plain, work, load)

        progress("template: generation time")
        with output_to(hook_log):
            rows += bakes.generation_time(work, 3 if arguments.quick else 7)
        if arguments.suite:
            progress("template: the whole test suite (python -m pytest -q)")
            rows += bakes.suite_time()

    print("# Benchmarks of the generated project and the template")
    print()
    for line in machine:
        print(line)
    print(
        f"In-process: create_app() in production, {arguments.rounds} rounds x "
        f"{arguments.batch} requests per variant, shuffled each round; ratios are medians of "
        "per-round ratios, times are medians; the auth rows take the median over "
        f"{arguments.processes} fresh process(es), each with its own rounds, and show the "
        "range over them. LOG_LEVEL=WARNING there, so the per-request "
        f"access log does not swamp the comparison. Rate limits are "
        f"{inprocess.HUGE_LIMIT}: every request is counted, none refused."
    )
    if not arguments.no_e2e:
        print(
            "End to end: gunicorn with the project's gunicorn.conf.py, 2 workers, "
            "APP_ENV=production, TRUSTED_PROXIES=1, X-Forwarded-Proto: https, default "
            "LOG_LEVEL (one access line per request), the same limits; wrk on the same "
            f"machine: {load.threads} threads, {load.connections} connections, "
            f"{load.duration} s per run, {load.rounds} round(s) of one run per route in "
            "random order; ratios are medians of per-round ratios, req/s are medians."
        )
    print()
    print(table(rows))
    missed = [row for row in rows if row.verdict == MISSED]
    print()
    print(
        f"{len(missed)} goal(s) missed" if missed else "Every goal met",
        f"({'quick smoke run, rough figures; ' if arguments.quick else ''}"
        f"{time.perf_counter() - started:.0f} s).",
    )
    if profile:
        print()
        print("Profile of GET /v1/secure-data (default configuration) against the open route:")
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
