"""Processes a run starts on loopback (Redis, PostgreSQL, gunicorn, wrk) and wrk's results."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
START_TIMEOUT = 30
TESTS = Path(__file__).resolve().parent.parent / "tests"
# Settings that would change what a served app does: never inherited from the caller.
_LEAKY_ENV = re.compile(
    r"PYTHONPATH|PYTHONHOME|APP_ENV|API_.*|REQUIRE_HTTPS|TRUSTED_PROXIES|RATELIMIT_.*"
    r"|AUTH_FAILURE_LIMIT|MAX_CONTENT_LENGTH|LOG_FORMAT|LOG_LEVEL|FLASK_.*|GUNICORN_.*"
    r"|WEB_CONCURRENCY|DATABASE_URL|PG[A-Z]*"
)


def clean_env(**settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not _LEAKY_ENV.fullmatch(name)}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **settings}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def get(url: str, headers: dict[str, str], timeout: float = 5) -> int:
    """The status of one GET, 0 when nothing answers."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Process:
    """A server we started, its output in a log file; ``stop()`` ends it and only it.

    ``started_in``: seconds from starting the process until ``ready()`` was first true.
    """

    def __init__(self, command: list[str], log: Path, ready, poll: float = 0.2, **popen) -> None:
        self.log = log
        began = time.monotonic()
        with log.open("wb") as handle:
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, **popen
            )
        deadline = began + START_TIMEOUT
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command[0]} did not start:\n{self.output()[-3000:]}")
            time.sleep(poll)
        self.started_in = time.monotonic() - began

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server(executable: str, work: Path) -> tuple[Process, str]:
    """A throwaway redis-server on a free loopback port, without persistence; and its URI."""
    port = free_port()
    directory = work / f"redis-{port}"
    directory.mkdir()

    def pong() -> bool:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    command = [executable, "--bind", LOOPBACK, "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    return Process(command, directory / "log", pong), f"redis://{LOOPBACK}:{port}/0"


@contextlib.contextmanager
def postgres_server() -> Iterator:
    """A PostgreSQL server of its own for the run, started as the template's tests start one.

    tests/postgres.py: Debian's server programs, ``initdb`` and ``postgres`` as the
    ``postgres`` user when we are root (PostgreSQL refuses root), on a free loopback
    port, passwords for every connection, nothing synced to disk; its directory is one
    of its own in the system's temporary directory (that user may not enter the run's),
    deleted when the server stops. Without PostgreSQL: LookupError (the rows say skipped).
    """
    import pytest  # tests/postgres.py reports through pytest's outcomes

    sys.path.insert(0, str(TESTS))
    try:
        import postgres
    finally:
        sys.path.remove(str(TESTS))
    try:
        server = postgres.PostgresServer.create()
    except pytest.skip.Exception:  # no server programs, or no postgres user to run them as
        raise LookupError("postgresql not installed (apt-get install postgresql)") from None
    except pytest.fail.Exception as error:
        raise RuntimeError(error.msg) from None
    try:
        yield server
    finally:
        server.destroy()


def gunicorn(app: str, cwd: Path, env: dict[str, str], log: Path, *flags: str):
    """``gunicorn APP`` from ``cwd`` (so its gunicorn.conf.py applies) on a free port; its URL.

    Its ``started_in`` is the time from starting gunicorn until ``/health`` answers.
    """
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    command = [GUNICORN, *flags, "--bind", f"{LOOPBACK}:{port}", app]

    def up() -> bool:  # the peer has no /health: any answer will do
        return get(f"{base}/health", {}, timeout=1) in (200, 404)

    return Process(command, log, up, poll=0.02, cwd=cwd, env=env), base


def booted_workers(server: Process, count: int) -> list[int]:
    """The process ids of the ``count`` workers gunicorn says (in its log) it booted."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        pids = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.output())]
        if len(pids) == count:
            return pids
        if len(pids) > count or time.monotonic() > deadline:
            raise RuntimeError(f"expected {count} workers:\n{server.output()[-3000:]}")
        time.sleep(0.05)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@contextlib.contextmanager
def only_worker(workers: list[int], worker: int) -> Iterator[None]:
    """Let only ``workers[worker]`` take new connections meanwhile: the kernel picks which
    worker accepts a connection, so the others are stopped (SIGSTOP), then go on (SIGCONT)."""
    paused = [pid for index, pid in enumerate(workers) if index != worker]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for pid in paused:
            while _state(pid) != "T":  # kill() may return while it still runs for a moment
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {pid} did not stop on SIGSTOP")
                time.sleep(0.001)
        yield
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


def memory(pid: int) -> tuple[int, int]:
    """A process's resident memory and the part of it no other process shares, in bytes.

    The first is RSS (/proc/PID/status); the second Private_Clean + Private_Dirty
    (/proc/PID/smaps_rollup): gunicorn forks its workers from a master that built the
    app (preload_app), so much of a worker's RSS is pages it still shares with it.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    private = sum(int(kb) for kb in re.findall(r"^Private_\w+:\s+(\d+) kB", rollup, re.MULTILINE))
    return rss * 1024, private * 1024


def gunicorn_settings(app: str, cwd: Path, env: dict[str, str], *flags: str) -> tuple[str, int]:
    """Worker class, workers and threads as gunicorn resolves them (``--print-config``):
    as words for the table, and the number of workers."""
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [GUNICORN, *flags, "--print-config", app], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"gunicorn --print-config {app} failed:\n{result.stderr[-3000:]}")
    found = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))
    threads = f" x {found['threads']} threads" if found["threads"] != "1" else ""
    worker = found["worker_class"].rsplit(".", 1)[-1]
    return f"{found['workers']} {worker} worker(s){threads}", int(found["workers"])


@dataclass
class Run:
    """One wrk run (or one in-process batch): throughput, latency, answers that were not 2xx."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors
    max_ms: float = 0.0  # the slowest request


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(
    executable: str,
    url: str,
    headers: dict[str, str],
    seconds: float,
    connections: int,
    script: Path | None = None,
) -> Run:
    """One wrk run; ``script``: a Lua script of wrk's (another method, a body)."""
    command = [executable, "--latency", "-t", "1", "-c", str(connections), "-d", f"{seconds}s"]
    if script is not None:
        command += ["--script", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(  # noqa: S603 - fixed arguments, loopback URL
        [*command, url], capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    text = result.stdout + result.stderr
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    latency = dict(re.findall(r"^\s+(50|99)%\s+([0-9.]+\w+)", text, re.MULTILINE))
    # "Latency   avg   stdev   max   +/- stdev": the slowest request is the third figure.
    slowest = re.search(r"^[ \t]+Latency[ \t]+\S+[ \t]+\S+[ \t]+([0-9.]+\w+)", text, re.MULTILINE)
    if result.returncode != 0 or not rps or len(latency) != 2 or not slowest:
        raise RuntimeError(f"wrk failed (exit {result.returncode}):\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(map(int, sockets.groups())) if sockets else 0

    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([0-9.]+)(\w+)", value).groups()
        return float(number) * _UNITS[unit]

    return Run(
        float(rps.group(1)), ms(latency["50"]), ms(latency["99"]), errors, ms(slowest.group(1))
    )


def redis_replies(uri: str) -> int:
    """How many times the redis-server has answered a client: its round trips so far."""
    import redis

    with redis.Redis.from_url(uri) as client:
        return client.info("stats")["total_writes_processed"]


def hiredis_paths(work: Path, requirement: str) -> tuple[str, str]:
    """Entries for PYTHONPATH under which redis-py parses without, and with, hiredis.

    One of them is empty: the packages as they are. hiredis is installed into a
    directory of the run when it is missing, hidden by a package that fails to
    import when it is present; redis-py then uses its pure-Python parser.
    """
    if importlib.util.find_spec("hiredis"):
        hidden = work / "no-hiredis" / "hiredis"
        hidden.mkdir(parents=True)
        (hidden / "__init__.py").write_text('raise ImportError("hidden by the benchmark")\n')
        return str(hidden.parent), ""
    target = work / "hiredis"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    result = subprocess.run([*command, requirement], capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install {requirement}:\n{result.stderr}")
    return "", str(target)


def uses_hiredis(path: str) -> bool:
    """Whether redis-py picks hiredis as its parser with ``path`` first on PYTHONPATH."""
    result = subprocess.run(
        [sys.executable, "-c", "import redis.utils; print(redis.utils.HIREDIS_AVAILABLE)"],
        env=clean_env(PYTHONPATH=path),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip() == "True"
