"""In-process benchmarks: the WSGI app called directly, and the key ring alone.

Every figure is a ratio taken side by side in one run: variants are interleaved in
rounds, in a new random order each round, and each round's times are divided by
the same round's baseline before the median is taken. Absolute times are shown
for reference only; they move from run to run on a shared machine.
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import gc
import json
import os
import pstats
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bakes import Bake
from report import INFO, Row, mann_whitney, median, ratio, shuffled, us, verdict

# Never reached, so no request is refused, but every request is still counted.
HUGE_LIMIT = "1000000000/hour"
MESSAGE = "Hello from a protected route."
KEY_NAME = "api-keys-1"  # the name create_app gives the first API_KEYS entry


def production_environ(key: str, work: Path) -> dict[str, str]:
    """Production settings for create_app(): the real defaults but for limits and logging."""
    return {
        "APP_ENV": "production",
        "API_KEYS": key,
        "API_KEYS_FILE": str(work / "no-registry.toml"),
        "RATELIMIT_DEFAULT": HUGE_LIMIT,
        "AUTH_FAILURE_LIMIT": HUGE_LIMIT,
        # One JSON access line per request would swamp the difference being measured.
        "LOG_LEVEL": "WARNING",
    }


def _same_body() -> dict[str, Any]:
    """What /v1/secure-data answers, built the same way, for the routes it is compared with."""
    return {"data": {"message": MESSAGE, "key": KEY_NAME}}


# Peers of require_api_key


def blog_decorator(keys: list[str]) -> Callable:
    """The blog pattern's decorator, with functools.wraps added so that it can be registered."""
    from flask import jsonify, request

    def require_api_key(view):
        @functools.wraps(view)
        def decorated(*args, **kwargs):
            if request.headers.get("x-api-key") in keys:
                return view(*args, **kwargs)
            return jsonify({"error": "Unauthorized"}), 401

        return decorated

    return require_api_key


def bench_routes() -> Any:
    """A blueprint for the benchmark's routes, at /bench, holding /bench/open: the open
    route, unauthenticated, answering /v1/secure-data's body.

    /v1/secure-data sits in a blueprint, and Flask looks up a blueprint's hooks on
    every request to it (about 2% of a request): routes compared with it sit in one
    too, so that the comparison counts the key check and the limits, not that.
    """
    from flask import Blueprint

    routes = Blueprint("bench", __name__, url_prefix="/bench")

    @routes.get("/open")
    def bench_open():
        return _same_body()

    return routes


def add_peer_routes(app, key: str, header: str) -> None:
    """/bench/open, /bench/blog and /bench/httpauth, all answering /v1/secure-data's body."""
    from flask_httpauth import HTTPTokenAuth

    api_keys_list = [key]
    blog = blog_decorator(api_keys_list)
    tokens = {key: KEY_NAME}
    token_auth = HTTPTokenAuth(header=header)
    token_auth.verify_token(tokens.get)
    routes = bench_routes()

    @routes.get("/blog")
    @blog
    def bench_blog():
        return _same_body()

    @routes.get("/httpauth")
    @token_auth.login_required
    def bench_httpauth():
        return _same_body()

    app.register_blueprint(routes)


def add_open_route(app) -> None:
    """/bench/open alone."""
    app.register_blueprint(bench_routes())


def add_flask_limiter(app, require_api_key: Callable) -> str:
    """Install Flask-Limiter on ``app`` with routes equivalent to ours; returns its version.

    Memory storage, fixed window, rate-limit headers on (as our limiter sends them),
    no default limit, so /bench/open pays only for the extension being installed.
    """
    from flask import g
    from flask_limiter import Limiter
    from flask_limiter import __version__ as flask_limiter_version
    from flask_limiter.util import get_remote_address

    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri="memory://",
        strategy="fixed-window",
        headers_enabled=True,
    )
    routes = bench_routes()

    @routes.get("/limited-open")
    @limiter.limit(HUGE_LIMIT)
    def bench_limited_open():
        return _same_body()

    # The key check first, then a limit per key, as ours does (keyed by fingerprint).
    @routes.get("/limited-secured")
    @require_api_key
    @limiter.limit(HUGE_LIMIT, key_func=lambda: g.api_key.fingerprint)
    def bench_limited_secured():
        return _same_body()

    app.register_blueprint(routes)
    return flask_limiter_version


# Driving a WSGI app


@dataclass
class Variant:
    name: str
    app: Callable
    environ: dict[str, Any]
    # Entered around each batch: lets a reference variant swap a function of the project.
    patched: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def call(self, count: int) -> float:
        """Make ``count`` requests; nanoseconds per request."""
        app, environ = self.app, self.environ
        with self.patched():
            start = time.perf_counter_ns()
            for _ in range(count):
                body = app(environ.copy(), _start_response)
                for _chunk in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            return (time.perf_counter_ns() - start) / count

    def answer(self) -> tuple[str, list[str], bytes]:
        """One request: its status, the names of its headers, its body."""
        answers: list[tuple[str, list[str]]] = []

        def start_response(status, headers, exc_info=None):
            answers.append((status, [name for name, _ in headers]))

        with self.patched():
            body = self.app(self.environ.copy(), start_response)
            data = b"".join(body)
            getattr(body, "close", lambda: None)()
        return answers[0][0], answers[0][1], data


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark setup: {what} does not behave as expected")


def _start_response(status, headers, exc_info=None):
    return None


def environ_for(path: str, headers: dict[str, str]) -> dict[str, Any]:
    """A WSGI environ for an HTTPS GET, built once and copied for each request."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path=path, base_url="https://localhost", headers=headers)
    try:
        return builder.get_environ()
    finally:
        builder.close()


def interleaved(
    variants: dict[str, Callable[[int], float]], rounds: int, batch: int
) -> dict[str, list[float]]:
    """Time each variant ``rounds`` times, in a new random order each round."""
    for variant in variants.values():  # warm-up: caches, first-request setup, lazy imports
        variant(max(1, batch // 4))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        gc.collect()
        for name in shuffled(variants):
            times[name].append(variants[name](batch))
    return times


def ratio_to(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of (variant / baseline in the same round)."""
    return median([a / b for a, b in zip(times[name], times[baseline], strict=True)])


# 1. Authentication overhead


def without_rate_limit_headers(ratelimit: Any) -> Callable[[], contextlib.AbstractContextManager]:
    """The project's RateLimiter.admit, counting as usual but sending no X-RateLimit-* headers.

    For a reference row only: it tells what the three headers cost apart from counting.
    """
    limiter_class = ratelimit.RateLimiter
    original = limiter_class.admit

    def admit(self, request, record):
        original(self, request, record)
        del request.environ[ratelimit.HEADERS_ENVIRON_KEY]

    @contextlib.contextmanager
    def patched():
        limiter_class.admit = admit
        try:
            yield
        finally:
            limiter_class.admit = original

    return patched


@dataclass
class Apps:
    key: str
    header: str
    limited: Any
    ratelimit: Any
    plain: Any
    plain_key: str
    with_flask_limiter: Any
    flask_limiter_version: str


def build_apps(limited: Bake, plain: Bake, work: Path) -> Apps:
    limited_package = limited.import_package()
    plain_package = plain.import_package()
    key = limited.module("keys").generate_key()
    plain_key = plain.module("keys").generate_key()
    app = limited_package.create_app(production_environ(key, work))
    add_peer_routes(app, key, limited.api_key_header)
    plain_app = plain_package.create_app(production_environ(plain_key, work))
    add_open_route(plain_app)
    other = plain_package.create_app(production_environ(plain_key, work))
    version = add_flask_limiter(other, plain.module("auth").require_api_key)
    return Apps(
        key,
        limited.api_key_header,
        app,
        limited.module("ratelimit"),
        plain_app,
        plain_key,
        other,
        version,
    )


def auth_variants(apps: Apps) -> dict[str, Variant]:
    with_key = {apps.header: apps.key}
    plain_key = {apps.header: apps.plain_key}
    return {
        "open": Variant("open", apps.limited, environ_for("/bench/open", with_key)),
        "health": Variant("health", apps.limited, environ_for("/health", with_key)),
        "secured": Variant("secured", apps.limited, environ_for("/v1/secure-data", with_key)),
        "secured, no headers": Variant(
            "secured, no headers",
            apps.limited,
            environ_for("/v1/secure-data", with_key),
            without_rate_limit_headers(apps.ratelimit),
        ),
        "blog": Variant("blog", apps.limited, environ_for("/bench/blog", with_key)),
        "httpauth": Variant("httpauth", apps.limited, environ_for("/bench/httpauth", with_key)),
        "plain open": Variant("plain open", apps.plain, environ_for("/bench/open", plain_key)),
        "plain secured": Variant(
            "plain secured", apps.plain, environ_for("/v1/secure-data", plain_key)
        ),
        "fl open": Variant(
            "fl open", apps.with_flask_limiter, environ_for("/bench/open", plain_key)
        ),
        "fl limited open": Variant(
            "fl limited open",
            apps.with_flask_limiter,
            environ_for("/bench/limited-open", plain_key),
        ),
        "fl limited secured": Variant(
            "fl limited secured",
            apps.with_flask_limiter,
            environ_for("/bench/limited-secured", plain_key),
        ),
    }


def check_answers(variants: dict[str, Variant]) -> None:
    """Every variant must answer 200 with the same body, or the comparison means nothing."""
    expected = variants["open"].answer()[2]
    for variant in variants.values():
        status, headers, body = variant.answer()
        if not status.startswith("200"):
            raise SystemExit(f"benchmark setup: {variant.name} answered {status}: {body[:200]!r}")
        if variant.name != "health" and body != expected:
            raise SystemExit(f"benchmark setup: {variant.name} answered {body!r}, not {expected!r}")
        limited = variant.name in ("secured", "fl limited open", "fl limited secured")
        _check(("X-RateLimit-Limit" in headers) == limited, f"{variant.name}'s rate-limit headers")


def auth_times(
    limited: Bake, plain: Bake, work: Path, rounds: int, batch: int
) -> tuple[dict[str, list[float]], str]:
    """Every auth variant, interleaved in this process: each one's ns per request, round by
    round, and Flask-Limiter's version."""
    apps = build_apps(limited, plain, work)
    variants = auth_variants(apps)
    check_answers(variants)
    times = interleaved({name: v.call for name, v in variants.items()}, rounds, batch)
    return times, apps.flask_limiter_version


def _auth_times_in_new_process(
    limited: Bake, plain: Bake, work: Path, rounds: int, batch: int
) -> tuple[dict[str, list[float]], str]:
    """:func:`auth_times` in a fresh interpreter (this file run as a script)."""
    result = work / f"auth-times-{secrets.token_hex(4)}.json"
    request = {
        "bakes": [asdict(bake) for bake in (limited, plain)],
        "work": str(work),
        "rounds": rounds,
        "batch": batch,
        "result": str(result),
    }
    finished = subprocess.run(  # noqa: S603 - this interpreter, this file
        [sys.executable, __file__],
        input=json.dumps(request, default=str),
        capture_output=True,
        text=True,
        check=False,
    )
    if finished.returncode != 0:
        raise SystemExit(f"in-process auth run failed:\n{finished.stderr[-3000:]}")
    answer = json.loads(result.read_text(encoding="utf-8"))
    return answer["times"], answer["flask_limiter"]


def auth_overhead(
    limited: Bake, plain: Bake, work: Path, rounds: int, batch: int, processes: int
) -> list[Row]:
    """The auth rows: each ratio is the median over ``processes`` fresh processes of each
    one's median per-round ratio.

    One process's figure depends on where its code and data happen to lie in memory
    (address-space layout, hash seeds): on these machines, runs of the same code
    differ by about 1% from process to process, more than rounds within one vary.
    Fresh processes average that out, as pyperf does with its worker processes.
    """
    runs = [
        _auth_times_in_new_process(limited, plain, work, rounds, batch) for _ in range(processes)
    ]
    every_times = [times for times, _ in runs]
    version = runs[0][1]
    section = "auth"

    def per_process(name: str, baseline: str) -> list[float]:
        """Each process's median per-round ratio, smallest first."""
        return sorted(ratio_to(times, name, baseline) for times in every_times)

    def typical_time(name: str) -> str:
        return us(median([median(times[name]) for times in every_times]))

    def compared(name: str, baseline: str) -> str:
        ratios = per_process(name, baseline)
        spread = (
            f"; {ratio(ratios[0])} to {ratio(ratios[-1])} over {processes} processes"
            if processes > 1
            else ""
        )
        return f"{ratio(median(ratios))} ({typical_time(name)} vs {typical_time(baseline)}{spread})"

    key_check = median(per_process("plain secured", "plain open"))
    secured = median(per_process("secured", "open"))
    return [
        Row(
            section,
            "key check alone (use_rate_limiting=false): secured vs open route",
            "< 1.05x",
            compared("plain secured", "plain open"),
            verdict(key_check < 1.05),
        ),
        Row(
            section,
            "default (key check + limits, memory://): secured vs open route",
            "<= 1.10x",
            compared("secured", "open"),
            verdict(secured <= 1.10),
        ),
        Row(
            section,
            "default without the 3 X-RateLimit-* headers (reference): secured vs open route",
            "-",
            compared("secured, no headers", "open"),
            INFO,
        ),
        Row(section, "/health vs open route (reference)", "-", compared("health", "open"), INFO),
        Row(
            section,
            "default secured route vs /health, whose body is smaller (reference)",
            "-",
            compared("secured", "health"),
            INFO,
        ),
        Row(
            section,
            "blog decorator (key in list) vs open route",
            "-",
            compared("blog", "open"),
            INFO,
        ),
        Row(
            section,
            "Flask-HTTPAuth HTTPTokenAuth (dict) vs open route",
            "-",
            compared("httpauth", "open"),
            INFO,
        ),
        Row(
            section,
            f"Flask-Limiter {version} installed, unlimited route vs open route",
            "-",
            compared("fl open", "plain open"),
            INFO,
        ),
        Row(
            section,
            f"Flask-Limiter {version}, limited route (per IP) vs open route",
            "-",
            compared("fl limited open", "plain open"),
            INFO,
        ),
        Row(
            section,
            f"Flask-Limiter {version}, key check + limit per key vs open route",
            "-",
            compared("fl limited secured", "plain open"),
            INFO,
        ),
    ]


def profile_secured(apps: Apps, package: str, requests: int, top: int = 20) -> str:
    """cProfile of the default secured route and of the open route: where the time goes.

    Times are µs per request under the profiler, which inflates them; compare rows.
    """
    variants = auth_variants(apps)
    lines = []
    for name in ("secured", "open"):
        variant = variants[name]
        variant.call(200)
        profiler = cProfile.Profile()
        profiler.enable()
        variant.call(requests)
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        total = max(entry[3] for entry in stats.values())
        lines.append(
            f"{variant.environ['PATH_INFO']}: {total / requests * 1e6:.0f} µs per request "
            "under cProfile"
        )
        if name != "secured":
            continue
        ours = [
            (entry[3], entry[1], function)
            for function, entry in stats.items()
            if f"/{package}/" in function[0] or "/limits/" in function[0]
        ]
        lines.append(f"  cumulative µs/request, calls/request: {package} and limits")
        for cumulative, calls, (path, line, function) in sorted(ours, reverse=True)[:top]:
            where = path.rsplit("/", 2)
            lines.append(
                f"  {cumulative / requests * 1e6:8.1f} {calls / requests:6.2f}  "
                f"{where[-2]}/{where[-1]}:{line}({function})"
            )
    return "\n".join(lines)


# 2. Scale in keys


def _lookup_loop(function: Callable[[str], Any], argument: str) -> Callable[[int], float]:
    def run(count: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(count):
            function(argument)
        return (time.perf_counter_ns() - start) / count

    return run


def _fresh(text: str) -> str:
    """An equal string that is a different object, as a header value read from a request is."""
    return "".join(list(text))


def key_scale(limited: Bake, sizes: list[int], rounds: int, batch: int) -> list[Row]:
    keys = limited.module("keys")
    record = keys.KeyRecord(name="bench", fingerprint="0" * keys.FINGERPRINT_LENGTH)
    real = keys.generate_key()
    filler = [os.urandom(32).hex() for _ in range(max(sizes) - 1)]  # other keys' hashes
    miss = keys.generate_key()  # well formed, so it reaches the hash lookup

    blog_real = secrets.token_hex(32)  # the blog's own key format
    blog_filler = [secrets.token_hex(32) for _ in range(max(sizes) - 1)]
    blog_miss = secrets.token_hex(32)

    loops: dict[str, Callable[[int], float]] = {}
    for size in sizes:
        ring = keys.KeyRing(
            [(keys.hash_key(real), record), *((d, record) for d in filler[: size - 1])]
        )
        _check(ring.lookup(_fresh(real)) is record and ring.lookup(miss) is None, "key ring")
        loops[f"ring hit {size}"] = _lookup_loop(ring.lookup, _fresh(real))
        loops[f"ring miss {size}"] = _lookup_loop(ring.lookup, miss)
        listed = [*blog_filler[: size - 1], blog_real]  # the valid key last: the worst case
        loops[f"blog hit {size}"] = _lookup_loop(listed.__contains__, _fresh(blog_real))
        loops[f"blog miss {size}"] = _lookup_loop(listed.__contains__, blog_miss)

    # Each timed batch lasts about a millisecond or more, whatever one lookup costs.
    sized: dict[str, Callable[[int], float]] = {}
    for name, loop in loops.items():
        per_call = loop(3)
        count = max(3, min(batch, int(2_000_000 / max(per_call, 1))))
        sized[name] = functools.partial(lambda loop, count, _ignored: loop(count), loop, count)
    times = interleaved(sized, rounds, batch)

    def series(kind: str) -> tuple[str, float]:
        smallest = sizes[0]
        parts = [f"{size:,}: {us(median(times[f'{kind} {size}']))}" for size in sizes]
        growth = ratio_to(times, f"{kind} {sizes[-1]}", f"{kind} {smallest}")
        return "; ".join(parts) + f" ({ratio(growth)} of {smallest:,})", growth

    section = "keys"
    rows = []
    for kind, label, goal in (
        ("ring hit", "KeyRing.lookup, valid key, by ring size", True),
        ("ring miss", "KeyRing.lookup, well-formed unknown key", True),
        ("blog hit", "blog key in list, valid key listed last", False),
        ("blog miss", "blog key in list, unknown key", False),
    ):
        text, growth = series(kind)
        if goal:
            rows.append(
                Row(
                    section,
                    label,
                    f"flat: {sizes[-1]:,} keys <= 1.25x",
                    text,
                    verdict(growth <= 1.25),
                )
            )
        else:
            rows.append(Row(section, label, "-", text, INFO))
    return rows


# 3. Timing leak


def near_miss(keys, real: str, replacement: str) -> str:
    """A wrong key sharing the prefix and the first 31 random characters of ``real``.

    The last random character becomes ``replacement`` and the checksum is recomputed,
    so the key is well formed and reaches the hash lookup, as a careful guess would.
    """
    body = real[: -keys.CHECKSUM_LENGTH][:-1] + replacement
    return body + keys._checksum(body)


def _samples(function: Callable[[str], Any], pools: tuple[list[str], list[str]], count: int):
    """Interleaved single-call timings (perf_counter_ns) of ``function`` on keys of two pools.

    Sample i of a group takes the next key of its pool, so costs peculiar to one key
    (its checksum's number of base62 digits, its dict slot) average out instead of
    posing as a difference between the groups. Every presented key is a new string,
    allocated in the order of the samples, so neither group is favoured by where its
    strings lie in memory (cache misses would be a difference of their own).
    """
    used = [0, 0]
    sequence = []
    for which in shuffled([0] * count + [1] * count):
        pool = pools[which]
        sequence.append((which, _fresh(pool[used[which] % len(pool)])))
        used[which] += 1
    for first, second in zip(pools[0][:2000], pools[1][:2000], strict=False):  # warm-up
        function(_fresh(first))
        function(_fresh(second))
    timings: tuple[list[int], list[int]] = ([], [])
    clock = time.perf_counter_ns
    gc.collect()
    for which, argument in sequence:
        start = clock()
        function(argument)
        timings[which].append(clock() - start)
    return timings


def timing_leak(limited: Bake, samples: int, stored: int = 500) -> list[Row]:
    """Does a guess that is nearly a stored key take longer to refuse than any other guess?

    Every sample uses a different wrong key: the near-misses are all 61 last-character
    variants of each of ``stored`` keys in the ring, the random ones are fresh keys.
    """
    keys = limited.module("keys")
    record = keys.KeyRecord(name="bench", fingerprint="-")
    reals = [keys.generate_key() for _ in range(stored)]
    ring = keys.KeyRing([(keys.hash_key(real), record) for real in reals])
    near = shuffled(
        near_miss(keys, real, replacement)
        for real in reals
        for replacement in keys.ALPHABET
        if replacement != real[-keys.CHECKSUM_LENGTH - 1]
    )[:samples]
    other = [keys.generate_key() for _ in range(samples)]
    _check(all(keys.is_well_formed(k) for k in near), "near-miss keys")
    _check(not any(ring.lookup(k) for k in [*near, *other]), "wrong keys")

    # The blog pattern's one key, and wrong keys differing from it in the last character only.
    blog_real = secrets.token_hex(32)
    blog_near = [blog_real[:-1] + c for c in "0123456789abcdef" if c != blog_real[-1]]
    blog_other = [secrets.token_hex(32) for _ in range(samples)]
    listed = [blog_real]

    rows = []
    for label, function, pools, goal in (
        (f"KeyRing.lookup ({stored:,} keys)", ring.lookup, (near, other), True),
        ("blog key in list (1 key)", listed.__contains__, (blog_near, blog_other), False),
    ):
        near_times, other_times = _samples(function, pools, samples)
        difference = median(near_times) - median(other_times)
        _z, p = mann_whitney(near_times, other_times)
        measured = (
            f"near {median(near_times):.0f} ns, random {median(other_times):.0f} ns: "
            f"diff {difference:+.0f} ns, Mann-Whitney p={p:.2g} ({samples:,} each)"
        )
        rows.append(
            Row(
                "timing",
                f"{label}: near-miss vs random wrong key",
                "p > 0.01 or diff within ±5 ns" if goal else "-",
                measured,
                verdict(p > 0.01 or abs(difference) < 5) if goal else INFO,
            )
        )
    return rows


def _auth_times_main() -> None:
    """Run as a script by :func:`_auth_times_in_new_process`: a request on stdin, the
    times in the file it names."""
    request = json.load(sys.stdin)
    limited, plain = (
        Bake(Path(bake["root"]), bake["package_name"], bake["api_key_header"])
        for bake in request["bakes"]
    )
    times, version = auth_times(
        limited, plain, Path(request["work"]), request["rounds"], request["batch"]
    )
    Path(request["result"]).write_text(
        json.dumps({"times": times, "flask_limiter": version}), encoding="utf-8"
    )


if __name__ == "__main__":
    _auth_times_main()
