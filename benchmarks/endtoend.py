"""End to end: the generated project under gunicorn on loopback, driven by wrk.

gunicorn runs as documented (``gunicorn '<package>:create_app()'`` from the project
root, so its gunicorn.conf.py applies) with 2 workers in production, behind one
trusted proxy hop played by sending ``X-Forwarded-Proto: https``. Nothing is sent
anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bakes import Bake
from inprocess import HUGE_LIMIT
from report import INFO, SKIPPED, Row, median, ratio, shuffled, verdict

START_TIMEOUT = 30
LOOPBACK = "127.0.0.1"
# Settings that would change what the served app does: never inherited from the caller.
_LEAKY_ENV = re.compile(
    r"PYTHONPATH|PYTHONHOME|APP_ENV|API_.*|REQUIRE_HTTPS|TRUSTED_PROXIES|RATELIMIT_.*"
    r"|AUTH_FAILURE_LIMIT|MAX_CONTENT_LENGTH|LOG_FORMAT|LOG_LEVEL|FLASK_.*|GUNICORN_.*"
    r"|WEB_CONCURRENCY"
)


@dataclass
class Load:
    duration: int
    threads: int
    connections: int
    rounds: int


@dataclass
class WrkResult:
    requests_per_second: float
    non_2xx: int
    socket_errors: tuple[int, int, int, int]  # wrk's connect, read, write, timeout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(check, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http only
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Redis:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self, executable: str, work: Path) -> None:
        self.port = free_port()
        self.log = work / f"redis-{self.port}.log"
        directory = work / f"redis-{self.port}"
        directory.mkdir()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [
                    executable,
                    "--bind",
                    LOOPBACK,
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_for(self._pong, self.process, "redis-server", self.log)

    @property
    def uri(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _pong(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process)


def round_trips(redis: Redis, count: int = 3000) -> Row:
    """What one Redis round trip costs this machine: redis-py as the app uses it, a raw socket.

    Wall time and this process's CPU time per PING, on the same loopback server; with
    a keyed request that needs a round trip (one a lease), this is what Redis adds to it.
    """
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.uri)
    raw = socket.create_connection((LOOPBACK, redis.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def raw_ping() -> None:
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        if not raw.recv(64).startswith(b"+PONG"):
            raise RuntimeError("redis-server did not answer PONG")

    timings = {}
    try:
        for name, ping in (("redis-py", client.ping), ("raw socket", raw_ping)):
            for _ in range(100):  # warm-up: connect, fill caches
                ping()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                ping()
            timings[name] = (
                (time.perf_counter() - wall) / count * 1e6,
                (time.process_time() - cpu) / count * 1e6,
            )
    finally:
        raw.close()
        client.close()
    measured = "; ".join(
        f"{name} {wall:.0f} µs wall, {cpu:.0f} µs client CPU"
        for name, (wall, cpu) in timings.items()
    )
    return Row("e2e", "one Redis round trip (PING) from Python, per call", "-", measured, INFO)


def gunicorn(project: Bake, key: str, work: Path, settings: dict[str, str]):
    """Start the project as documented; returns (process, base URL, log path)."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not _LEAKY_ENV.fullmatch(name)}
    env.update(
        PYTHONPATH="src",
        PYTHONDONTWRITEBYTECODE="1",
        APP_ENV="production",
        API_KEYS=key,
        API_KEYS_FILE=str(work / "no-registry.toml"),
        TRUSTED_PROXIES="1",
        GUNICORN_BIND=f"{LOOPBACK}:{port}",
        WEB_CONCURRENCY="2",
        RATELIMIT_DEFAULT=HUGE_LIMIT,
        AUTH_FAILURE_LIMIT=HUGE_LIMIT,
        **settings,
    )
    log = work / f"gunicorn-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "gunicorn", f"{project.package_name}:create_app()"],
            cwd=project.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{LOOPBACK}:{port}"
    _wait_for(lambda: _get(f"{base}/health", {}) == 200, process, "gunicorn", log)
    return process, base, log


_REQUESTS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")
_SOCKET = re.compile(
    r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)"
)


# A wrk script that sends each request from a random client address (X-Forwarded-For,
# believed with TRUSTED_PROXIES=1): a crowd of clients with one request each, for whom a
# Redis lease is no help.
CROWD_SCRIPT = """
request = function()
  wrk.headers["X-Forwarded-For"] = string.format(
    "10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  return wrk.format()
end
"""


def wrk(
    executable: str,
    url: str,
    headers: dict[str, str],
    load: Load,
    duration: int,
    script: Path | None = None,
) -> WrkResult:
    command = [
        executable,
        "-t",
        str(load.threads),
        "-c",
        str(load.connections),
        "-d",
        f"{duration}s",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    result = subprocess.run(  # noqa: S603 - fixed arguments, loopback URL
        [*command, url],
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + 60,
    )
    text = result.stdout + result.stderr
    found = _REQUESTS.search(text)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {result.returncode}):\n{text}")
    non_2xx = int(m.group(1)) if (m := _NON_2XX.search(text)) else 0
    m = _SOCKET.search(text)
    socket_errors = tuple(map(int, m.groups())) if m else (0, 0, 0, 0)
    return WrkResult(float(found.group(1)), non_2xx, socket_errors)


def measure(
    wrk_path: str, base: str, header: str, key: str, load: Load, script: Path | None
) -> dict[str, list[WrkResult]]:
    # Both routes get the same headers, so the requests differ only in their path.
    headers = {"X-Forwarded-Proto": "https", header: key}
    paths = {"health": f"{base}/health", "secured": f"{base}/v1/secure-data"}
    if _get(paths["secured"], headers) != 200:
        raise RuntimeError("GET /v1/secure-data with the key did not answer 200")
    for url in paths.values():  # warm-up: workers import, caches fill
        wrk(wrk_path, url, headers, load, 1, script)
    results: dict[str, list[WrkResult]] = {name: [] for name in paths}
    for _ in range(load.rounds):
        for name in shuffled(paths):
            results[name].append(wrk(wrk_path, paths[name], headers, load, load.duration, script))
    return results


def end_to_end(limited: Bake, plain: Bake, work: Path, load: Load) -> list[Row]:
    section = "e2e"
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        return [
            Row(
                section,
                "gunicorn + wrk",
                "ratio >= 0.90x, 0 errors",
                "wrk is not installed (Debian: apt-get install wrk); --no-e2e skips this part",
                SKIPPED,
            )
        ]
    redis_path = shutil.which("redis-server")
    crowd = work / "crowd.lua"
    crowd.write_text(CROWD_SCRIPT)
    # label, project, storage, has a goal, wrk script
    setups: list[tuple[str, Bake, str | None, bool, Path | None]] = [
        ("default, memory://", limited, None, True, None),
        ("redis:// (local redis-server)", limited, "redis", True, None),
        (
            "redis://, each request from a new client address (reference)",
            limited,
            "redis",
            False,
            crowd,
        ),
        ("use_rate_limiting=false (reference)", plain, None, False, None),
    ]
    rows = []
    what = "secured vs /health req/s"
    for label, project, storage, goal, script in setups:
        settings = {}
        redis = None
        if storage == "redis":
            if redis_path is None:
                rows.append(
                    Row(section, f"{label}: {what}", "-", "redis-server not installed", SKIPPED)
                )
                continue
            redis = Redis(redis_path, work)
            settings["RATELIMIT_STORAGE_URI"] = redis.uri
            if script is None:
                rows.append(round_trips(redis))
        key = project.module("keys").generate_key()
        process = None
        try:
            process, base, _log = gunicorn(project, key, work, settings)
            results = measure(wrk_path, base, project.api_key_header, key, load, script)
        finally:
            if process is not None:
                _stop(process)
            if redis is not None:
                redis.stop()
        secured = median([r.requests_per_second for r in results["secured"]])
        health = median([r.requests_per_second for r in results["health"]])
        # Each round ran both routes back to back: its ratio is free of slower drifts.
        value = median(
            [
                s.requests_per_second / h.requests_per_second
                for s, h in zip(results["secured"], results["health"], strict=True)
            ]
        )
        runs = [run for runs in results.values() for run in runs]
        non_2xx = sum(run.non_2xx for run in runs)
        kinds = [sum(counts) for counts in zip(*(run.socket_errors for run in runs), strict=True)]
        socket_errors = sum(kinds)
        errors = non_2xx + socket_errors
        measured = (
            f"{ratio(value)} ({secured:,.0f} vs {health:,.0f} req/s); "
            f"errors: {non_2xx} non-2xx, {socket_errors} socket"
            + (
                " (connect {}, read {}, write {}, timeout {})".format(*kinds)
                if socket_errors
                else ""
            )
        )
        rows.append(
            Row(
                section,
                f"{label}: {what}",
                ">= 0.90x, 0 errors" if goal else "-",
                measured,
                verdict(value >= 0.90 and errors == 0) if goal else INFO,
            )
        )
    return rows
