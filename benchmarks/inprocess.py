"""In process: the project's WSGI app from create_app(), called directly, variants interleaved.

Run by run.py in the project root with PYTHONPATH=src and production settings:

    python inprocess.py PACKAGE HEADER KEY PLAIN OWNED ROUNDS BATCH OUTPUT.json

KEY is sent to /health and /v1/secure-data; PLAIN and OWNED, two registry keys
alike but for their owner's limit (OWNED's owner has one), to /v1/secure-data.
Writes, for each variant and round: requests per second, p50 and p99 of single
requests, and the number of answers that were not 2xx.
"""

import importlib
import json
import secrets
import sys
import time

from werkzeug.test import EnvironBuilder

SECURE = "/v1/secure-data"


def main() -> None:
    package, header, key, plain, owned, rounds, batch, output = sys.argv[1:]
    app = importlib.import_module(package).create_app()
    variants = {
        "health": ("/health", key),
        "secure": (SECURE, key),
        "plain": (SECURE, plain),
        "owned": (SECURE, owned),
    }
    environs = {
        name: EnvironBuilder(
            path, base_url="https://localhost", headers={header: sent}
        ).get_environ()
        for name, (path, sent) in variants.items()
    }
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def one(environ) -> int:
        start = time.perf_counter_ns()
        body = app(dict(environ), start_response)
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
        return time.perf_counter_ns() - start

    for environ in environs.values():  # warm-up: first requests fill Flask's caches
        for _ in range(50):
            one(environ)
    statuses.clear()
    results = {name: [] for name in variants}
    for _ in range(int(rounds)):
        for name in secrets.SystemRandom().sample(list(variants), len(variants)):
            times = sorted(one(environs[name]) for _ in range(int(batch)))
            errors = sum(not status.startswith("2") for status in statuses)
            statuses.clear()
            results[name].append(
                {
                    "rps": len(times) / (sum(times) / 1e9),
                    "p50_ms": times[len(times) // 2] / 1e6,
                    "p99_ms": times[len(times) * 99 // 100] / 1e6,
                    "errors": errors,
                }
            )
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
