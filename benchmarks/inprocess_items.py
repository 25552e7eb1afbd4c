"""In process, one side of ``--before``/``--after``: the project's WSGI app from create_app(),
called directly on ``POST /v1/items`` and ``GET /v1/items``, a batch at a time on command.

Run by refs.py in the project root with PYTHONPATH=src and the side's production settings:

    python inprocess_items.py PACKAGE HEADER BATCH

The key comes as the first line of stdin (not in the arguments, which any user of the
machine may read). Then each line ``post`` or ``get`` runs BATCH requests to that
route and answers one JSON line: requests per second, p50, p99 and the slowest of
single requests, and the number of answers that were not 2xx. The two sides have the
same package name, so each runs in a process of its own, and refs.py alternates them.
"""

import importlib
import io
import json
import sys
import time

from werkzeug.test import EnvironBuilder

ITEMS = "/v1/items"
NEW_ITEM = {"name": "an item from the benchmark"}
WARM_UP = 50  # first requests fill Flask's caches and the database's connection pool


def main() -> None:
    package, header, batch = sys.argv[1:]
    answers = sys.stdout
    sys.stdout = sys.stderr  # whatever the app prints must not mix with the answers
    key = sys.stdin.readline().strip()
    app = importlib.import_module(package).create_app()
    headers = {header: key}
    body = json.dumps(NEW_ITEM).encode()
    environs = {
        "post": EnvironBuilder(
            ITEMS,
            base_url="https://localhost",
            method="POST",
            headers=headers,
            data=body,
            content_type="application/json",
        ).get_environ(),
        "get": EnvironBuilder(ITEMS, base_url="https://localhost", headers=headers).get_environ(),
    }
    statuses = []

    def start_response(status, response_headers, exc_info=None):
        statuses.append(status)

    def one(environ) -> int:
        sent = body if environ["REQUEST_METHOD"] == "POST" else b""
        environ = {**environ, "wsgi.input": io.BytesIO(sent)}  # a body can be read only once
        start = time.perf_counter_ns()
        answer = app(environ, start_response)
        for _ in answer:
            pass
        if hasattr(answer, "close"):
            answer.close()
        return time.perf_counter_ns() - start

    for environ in environs.values():
        for _ in range(WARM_UP):
            one(environ)
    failed = [status for status in statuses if not status.startswith("2")]
    if failed:  # a side that cannot answer is not worth timing
        raise SystemExit(f"warm-up answered {sorted(set(failed))}")
    statuses.clear()
    for line in sys.stdin:
        times = sorted(one(environs[line.strip()]) for _ in range(int(batch)))
        errors = sum(not status.startswith("2") for status in statuses)
        statuses.clear()
        run = {
            "rps": len(times) / (sum(times) / 1e9),
            "p50_ms": times[len(times) // 2] / 1e6,
            "p99_ms": times[len(times) * 99 // 100] / 1e6,
            "max_ms": times[-1] / 1e6,
            "errors": errors,
        }
        print(json.dumps(run), file=answers, flush=True)


if __name__ == "__main__":
    main()
