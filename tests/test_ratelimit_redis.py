"""Rate limits against a real Redis: one count for every worker, fail closed, no raw key.

The default project runs under gunicorn as documented (production, from the
project root) with RATELIMIT_STORAGE_URI pointing at a redis-server that each
test starts on a free loopback port, persisting nothing. Requests go over real
sockets, each on a fresh connection; ``X-Forwarded-Proto: https`` with
TRUSTED_PROXIES=1 plays the TLS-terminating proxy, and ``X-Forwarded-For``
picks the client IP the app sees.

Which worker accepts a connection is up to the kernel. To choose the worker
that answers, a test pauses the others (SIGSTOP) while it sends: a paused
process accepts nothing, so the one left running takes every new connection.
The paused workers resume (SIGCONT) as soon as the answers are in.

Each request makes one atomic call to Redis (a Lua script), so the counts are
exact: no worker can admit a request that another has already counted past
the limit.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import redis
import requests
from limits import parse

from bakery import (
    Baked,
    Server,
    booted_workers,
    flask_env,
    free_port,
    gunicorn_command,
    gunicorn_env,
    load_keys_module,
    migrated_database,
    only_worker,
    output,
    run,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

PROTECTED = "/v1/secure-data"
ATTACKER = "203.0.113.7"
OTHER_CLIENT = "198.51.100.9"
# Per hour, not per minute: a test never straddles the end of a window.
KEY_LIMIT = "10/hour"
NO_FAILURE_LIMIT = "100000/hour"
WORKERS_WARNING = "each worker counts separately"
# Seconds a redis-server, a sentinel or a worker may take to start or stop.
PROCESS_TIMEOUT = 10
# The name the tests' own Redis connections give themselves, to tell their
# commands apart from the app's.
TEST_CLIENT = "tests"


# Redis


class RedisServer:
    """A throw-away redis-server on a loopback port: nothing saved, every command logged.

    The slow log with a threshold of 0 keeps every command with its arguments
    and the client that sent it (a script's own commands too, from no client),
    so a test can read back every key name the app ever used, even one that
    expired or was deleted since, and count the app's round trips.
    """

    def __init__(self, binary: str, port: int, workdir: Path, *, cluster: bool = False) -> None:
        self.binary, self.port, self.workdir, self.cluster = binary, port, workdir, cluster
        self.url = f"redis+cluster://127.0.0.1:{port}" if cluster else f"redis://127.0.0.1:{port}/0"
        self.bus_port = free_port() if cluster else None
        self.client = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=5, client_name=TEST_CLIENT
        )
        self.process: subprocess.Popen | None = None
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--slowlog-log-slower-than", "0",
            "--slowlog-max-len", "100000",
        ]  # fmt: skip
        if self.cluster:  # one node serving every slot: multi-key calls must share a slot
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # A port of its own for the cluster bus: by default it is the port + 10000,
            # which does not exist for a free port above 55535.
            command += ["--cluster-port", str(self.bus_port)]
        self.starts += 1
        log = self.workdir / f"redis-{self.starts}.log"
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.process.returncode}:\n{log.read_text()}"
                )
            try:
                if self.client.ping():
                    if self.cluster:
                        self._serve_every_slot()
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        pytest.fail(f"redis-server did not answer PING within {PROCESS_TIMEOUT}s")

    def _serve_every_slot(self) -> None:
        self.client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while b"cluster_state:ok" not in self.client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                pytest.fail("the one-node Redis Cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()

    def contents(self) -> dict[bytes, bytes]:
        """Every key now in Redis (SCAN) with its value, whatever its type."""
        readers = {
            b"string": self.client.get,
            b"hash": lambda name: repr(self.client.hgetall(name)).encode(),
            b"list": lambda name: repr(self.client.lrange(name, 0, -1)).encode(),
            b"set": lambda name: repr(self.client.smembers(name)).encode(),
            b"zset": lambda name: repr(self.client.zrange(name, 0, -1, withscores=True)).encode(),
        }
        found = {}
        for name in self.client.scan_iter(count=1000):
            read = readers.get(self.client.type(name), self.client.dump)
            found[name] = read(name) or b""
        return found

    def commands(self) -> list[bytes]:
        """Every command Redis ran since it started, arguments included (its slow log)."""
        entries = self.client.slowlog_get(-1)
        assert len(entries) < 100000, "the slow log is full: commands were dropped"
        return [entry["command"] for entry in entries]

    def last_command_id(self) -> int:
        """The slow log's id of the last command run so far."""
        return max((entry["id"] for entry in self.client.slowlog_get(-1)), default=-1)

    def app_commands(self, after: int) -> list[bytes]:
        """The commands clients other than the tests sent since the command ``after``: one
        per round trip (a script's own commands come from no client address)."""
        entries = sorted(self.client.slowlog_get(-1), key=lambda entry: entry["id"])
        return [
            entry["command"]
            for entry in entries
            if entry["id"] > after
            and entry["client_name"] != TEST_CLIENT.encode()
            and entry["client_address"].startswith(b"127.0.0.1:")
        ]


def redis_binary() -> str:
    """The redis-server binary. Without it a test skips, loudly, on a developer's machine;
    in CI (where .ci/run installs it) that is a failure, never a skip.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        reason = (
            "NO REDIS TEST: redis-server is not installed, so the rate limits shared "
            "through Redis were NOT tested; install the redis-server package "
            "(.ci/run does, with apt-get)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own, stopped at teardown."""
    server = RedisServer(redis_binary(), free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class RedisSentinel:
    """A redis-sentinel watching a RedisServer as the master ``apikeys``."""

    MASTER = "apikeys"

    def __init__(self, master: RedisServer, workdir: Path) -> None:
        self.master, self.port = master, free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{self.MASTER}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"  # sentinel rewrites its config: a file of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {master.port} 1\n",
            encoding="utf-8",
        )
        log = (workdir / "sentinel.log").open("wb")
        self.process = subprocess.Popen(
            [master.binary, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while True:
            try:
                if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER):
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(
                    f"redis-sentinel did not start:\n{(workdir / 'sentinel.log').read_text()}"
                )
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_cluster(tmp_path):
    """A one-node Redis Cluster of this test's own (it refuses cross-slot calls as any does)."""
    server = RedisServer(redis_binary(), free_port(), tmp_path / "cluster", cluster=True)
    server.start()
    yield server
    server.stop()


# The API under gunicorn


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


@dataclass
class Api:
    server: Server
    port: int
    header: str
    workers: list[int] = field(default_factory=list)  # their process ids, in boot order

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, key: str | None, client_ip: str | None) -> dict[str, str]:
        headers = {"X-Forwarded-Proto": "https"}
        if key is not None:
            headers[self.header] = key
        if client_ip is not None:
            headers["X-Forwarded-For"] = client_ip
        return headers

    def get(self, path: str, key: str | None = None, client_ip: str | None = None) -> Answer:
        """GET on a connection of its own (requests.get opens and closes one)."""
        response = requests.get(self.base + path, headers=self.headers(key, client_ip), timeout=10)
        return Answer(response.status_code, response.headers, response.text)

    def only(self, worker: int) -> AbstractContextManager[None]:
        """Let only ``worker`` (an index into ``workers``) take new connections meanwhile."""
        return only_worker(self.workers, worker)

    def to(
        self, worker: int, path: str, key: str | None = None, client_ip: str | None = None
    ) -> Answer:
        """GET answered by ``worker``."""
        with self.only(worker):
            return self.get(path, key, client_ip)

    def burst(self, count: int, path: str, key: str | None = None) -> list[Answer]:
        """``count`` GETs sent at once from 10 threads, each on a connection of its own."""
        with ThreadPoolExecutor(max_workers=10) as pool:
            return list(pool.map(lambda _: self.get(path, key), range(count)))


@pytest.fixture
def serve(default_project: Baked, project_copy, start, tmp_path):
    """``serve(**settings)`` -> Api: the default project (or ``project``) under gunicorn, in
    a copy whose database `flask db upgrade` made, until teardown."""

    def _serve(project: Baked | None = None, **settings: str) -> Api:
        project = project or default_project
        port = free_port()
        workers = settings.pop("WEB_CONCURRENCY")  # every test says how many it needs
        settings = {"TRUSTED_PROXIES": "1", **settings}
        env = gunicorn_env(project, port, tmp_path, **settings)
        env = {name: value for name, value in env.items() if value is not None}
        env["WEB_CONCURRENCY"] = workers
        root = project_copy(project, migrated=True)
        server = start(gunicorn_command(project), root, env)
        api = Api(server, port, str(project.context["api_key_header"]))
        wait_until_healthy(server, api.base)
        api.workers = booted_workers(server, int(workers))
        return api

    return _serve


@pytest.fixture
def keys(default_project) -> ModuleType:
    """The default project's keys.py: generate_key, hashed_entry, fingerprint."""
    return load_keys_module(default_project.root)


@pytest.fixture
def package(default_project, monkeypatch) -> ModuleType:
    """The default project's package, imported in this process from its ``src``."""
    monkeypatch.syspath_prepend(str(default_project.root / "src"))
    return importlib.import_module(default_project.package)


@pytest.fixture
def ratelimit(package) -> ModuleType:
    """The default project's ratelimit.py: its storages and limiter, against Redis alone."""
    return importlib.import_module(f"{package.__name__}.ratelimit")


def random_part(keys: ModuleType, key: str) -> str:
    start = len(keys.KEY_PREFIX) + 1
    return key[start : start + keys.RANDOM_LENGTH]


def assert_no_raw_key(redis_server: RedisServer, keys: ModuleType, sent: list[str]) -> None:
    """No key sent, nor its random part, is a Redis key, a value, or a command argument."""
    contents = redis_server.contents()
    commands = redis_server.commands()
    assert contents, "nothing was counted in Redis"
    for key in sent:
        for secret in (key.encode(), random_part(keys, key).encode()):
            for name, value in contents.items():
                assert secret not in name, f"a raw key is a Redis key: {name!r}"
                assert secret not in value, f"a raw key is stored in Redis under {name!r}"
            for command in commands:
                assert secret not in command, f"a raw key was sent to Redis: {command!r}"


def counters_of(contents: Mapping[bytes, bytes], *identifiers: str) -> dict[str, int]:
    """The limiter's counters named by these parts: ``"key", fingerprint``, ``"auth-failures",
    client`` or ``"route", endpoint, fingerprint`` (`limits` joins them with slashes)."""
    marker = "/" + "/".join(identifiers) + "/"
    return {
        name.decode(): int(value) for name, value in contents.items() if marker in name.decode()
    }


def log_lines(server: Server, *words: str) -> list[str]:
    return [line for line in server.output().splitlines() if all(word in line for word in words)]


def hash_tag(name: bytes) -> bytes:
    """The part of a key name a Redis Cluster hashes: the first ``{...}``, if not empty."""
    start = name.find(b"{")
    end = name.find(b"}", start + 1)
    return name[start + 1 : end] if start >= 0 and end > start + 1 else name


# Tests


def test_two_workers_share_one_limit_through_redis(serve, redis_server, keys):
    """RATELIMIT_DEFAULT=10/hour, two workers answering in turns: 10 answers in all, then 429
    from either worker, and never a 200 after a 429."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT=KEY_LIMIT,
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )

    # Each worker answers every other request: it can only report Remaining 9 - n for
    # the nth if it counted the other's requests too.
    answers = [api.to(sent % 2, PROTECTED, key) for sent in range(16)]

    assert [answer.status for answer in answers] == [200] * 10 + [429] * 6, [
        (answer.status, answer.headers.get("X-RateLimit-Remaining")) for answer in answers
    ]
    for sent, answer in enumerate(answers[:10], start=1):
        assert answer.headers["X-RateLimit-Limit"] == "10"
        assert answer.headers["X-RateLimit-Remaining"] == str(10 - sent), (sent, answer.headers)
        assert int(answer.headers["X-RateLimit-Reset"]) > time.time()
    for answer in answers[10:]:
        assert answer.json()["error"] == "rate_limited", answer.text
        assert answer.json()["message"]
        assert 1 <= int(answer.headers["Retry-After"]) <= 3600, answer.headers
        assert answer.headers["X-RateLimit-Limit"] == "10"
        assert answer.headers["X-RateLimit-Remaining"] == "0"

    # One counter in Redis, named by the key's fingerprint, that counted every request
    # once, the refused ones too; no raw key anywhere.
    counters = counters_of(redis_server.contents(), "key", keys.fingerprint(key))
    assert list(counters.values()) == [16], counters
    assert_no_raw_key(redis_server, keys, [key])
    assert api.server.stop() == 0, api.server.output()
    assert not log_lines(api.server, WORKERS_WARNING), api.server.output()


def test_two_workers_admit_a_busy_client_exactly_its_limit(serve, redis_server, keys):
    """RATELIMIT_DEFAULT=200/hour, 260 requests in bursts of 20 sent at once, to one worker's
    threads, the other's, or both workers: exactly the first 200 are admitted, each with a
    place of its own in the count, and every later one is refused."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT="200/hour",
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )
    bursts = []
    for burst in range(13):
        if burst % 3 == 2:  # both workers at once
            bursts.append(api.burst(20, PROTECTED, key))
        else:
            with api.only(burst % 3):
                bursts.append(api.burst(20, PROTECTED, key))

    statuses = [[answer.status for answer in answers] for answers in bursts]
    assert statuses == [[200] * 20] * 10 + [[429] * 20] * 3, statuses
    admitted = [answer for answers in bursts[:10] for answer in answers]
    places = sorted(200 - int(answer.headers["X-RateLimit-Remaining"]) for answer in admitted)
    assert places == list(range(1, 201)), places
    counters = counters_of(redis_server.contents(), "key", keys.fingerprint(key))
    assert list(counters.values()) == [260], counters
    assert_no_raw_key(redis_server, keys, [key])
    assert api.server.stop() == 0, api.server.output()


def test_memory_storage_counts_per_worker(serve, keys):
    """The control for the tests above: with memory://, a worker has not seen the other's."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_DEFAULT=KEY_LIMIT,
        WEB_CONCURRENCY="2",
    )
    with api.only(0):
        remaining = [api.get(PROTECTED, key).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["9", "8", "7"]
    assert api.to(1, PROTECTED, key).headers["X-RateLimit-Remaining"] == "9"


@pytest.mark.parametrize(
    ("attacker", "network", "neighbour"),
    [
        (ATTACKER, ATTACKER, OTHER_CLIENT),
        # Each request from another address of one /64, as one IPv6 connection may send.
        ("2001:db8:7:7:{0:x}::{0:x}", "2001:db8:7:7::/64", "2001:db8:7:8::1"),
    ],
    ids=["ipv4", "ipv6-64"],
)
def test_failed_authentications_stop_a_brute_force_loop(
    serve, redis_server, keys, attacker, network, neighbour
):
    """AUTH_FAILURE_LIMIT=5/hour, two workers answering in turns: five guesses get 401, every
    later request of that client 429, a right guess and the attacker's own key included, at
    once and from either worker. The cap is checked before the key: those count on no key."""
    valid, own = keys.generate_key(), keys.generate_key()
    api = serve(
        API_KEYS=f"{keys.hashed_entry(valid)},{keys.hashed_entry(own)}",
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT="1000/hour",
        AUTH_FAILURE_LIMIT="5/hour",
        WEB_CONCURRENCY="2",
    )
    guesses = [keys.generate_key() for _ in range(30)]
    assert all(keys.is_well_formed(guess) for guess in guesses)
    # The attacker holds a key of its own, and has used it on both workers.
    own_answers = [api.to(sent % 2, PROTECTED, own, attacker.format(sent)) for sent in range(8)]
    assert {answer.status for answer in own_answers} == {200}

    answers = [
        api.to(sent % 2, PROTECTED, guess, attacker.format(100 + sent))
        for sent, guess in enumerate(guesses)
    ]

    assert [answer.status for answer in answers] == [401] * 5 + [429] * 25
    assert {answer.json()["error"] for answer in answers[:5]} == {"invalid_api_key"}
    for answer in answers[5:]:
        assert answer.json()["error"] == "rate_limited", answer.text
        assert 1 <= int(answer.headers["Retry-After"]) <= 3600, answer.headers
    # The attacker is refused by either worker, at once, even with a valid key it guessed,
    # and with its own; another client is not.
    for worker in (0, 1):
        for key in (valid, own):
            blocked = api.to(worker, PROTECTED, key, attacker.format(200 + worker))
            assert blocked.status == 429, blocked.text
            assert blocked.json()["error"] == "rate_limited", blocked.text
    assert api.get(PROTECTED, valid, client_ip=neighbour).status == 200
    assert api.get("/health", client_ip=attacker.format(1)).status == 200
    assert api.get("/health").status == 200

    # Only five guesses were ever checked (and logged): the loop learned nothing more.
    assert api.server.stop() == 0, api.server.output()
    failures = log_lines(api.server, "authentication failed")
    assert len(failures) == 5, "\n".join(failures)
    checked = {keys.fingerprint(guess) for guess in guesses[:5]}
    assert all(any(fp in line for fp in checked) for line in failures), failures
    # One failure counter, for the attacker's address or /64, that counted every guess; the
    # requests it refused with a key never reached that key's counter.
    contents = redis_server.contents()
    failure_counters = counters_of(contents, "auth-failures")
    assert failure_counters == counters_of(contents, "auth-failures", network), contents
    assert list(failure_counters.values()) == [30], contents
    assert list(counters_of(contents, "key", keys.fingerprint(own)).values()) == [8], contents
    assert list(counters_of(contents, "key", keys.fingerprint(valid)).values()) == [1], contents
    assert_no_raw_key(redis_server, keys, [valid, own, *guesses])


def test_redis_stopped_mid_run_fails_closed_and_recovers(serve, redis_server, keys):
    """No Redis: protected routes 503 with Retry-After (one ERROR logged), open routes 200;
    Redis back: 200, counted again from the first request."""
    key = keys.generate_key()
    # One worker: "one ERROR line" is then exact (each worker notices the outage once).
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT=KEY_LIMIT,
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="1",
    )
    assert api.get(PROTECTED, key).status == 200

    redis_server.stop()
    outage = []
    for presented in [key] * 5 + [keys.generate_key(), None]:
        began = time.monotonic()
        outage.append(api.get(PROTECTED, presented))
        assert time.monotonic() - began < 3, "a request waited on the missing Redis"
    for answer in outage:
        assert answer.status == 503, answer.text
        assert answer.json()["error"] == "rate_limit_unavailable", answer.text
        assert answer.json()["message"]
        assert 1 <= int(answer.headers["Retry-After"]) <= 60, answer.headers
        assert "Traceback" not in answer.text
    assert api.get("/health").status == 200
    openapi = api.get("/openapi.json")
    assert openapi.status == 200 and openapi.json()["openapi"].startswith("3.1"), openapi.text
    assert api.server.process.poll() is None, api.server.output()
    errors = log_lines(api.server, "ERROR")
    assert len(errors) == 1 and "storage" in errors[0], api.server.output()

    redis_server.start()
    deadline = time.monotonic() + 5
    while (answer := api.get(PROTECTED, key)).status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.status == 200, api.server.output()
    # The new Redis persisted nothing: counting starts again, with the first request served.
    assert answer.headers["X-RateLimit-Remaining"] == "9", answer.headers
    assert api.get(PROTECTED, key).headers["X-RateLimit-Remaining"] == "8"
    counters = counters_of(redis_server.contents(), "key", keys.fingerprint(key))
    assert list(counters.values()) == [2], counters

    assert api.server.stop() == 0, api.server.output()
    logged = api.server.output()
    assert len(log_lines(api.server, "ERROR")) == 1, logged
    back = log_lines(api.server, "WARNING", "storage is back")
    assert len(back) == 1, logged
    assert "Traceback" not in logged
    assert len(log_lines(api.server, "Booting worker")) == 1, "a worker died:\n" + logged


def test_no_raw_key_reaches_redis(serve, redis_server, keys):
    """Valid keys (plain and hashed in API_KEYS) and guesses: Redis only ever sees fingerprints."""
    plain = keys.generate_key()
    hashed = keys.generate_key()
    api = serve(
        API_KEYS=f"{plain},{keys.hashed_entry(hashed)}",
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT=KEY_LIMIT,
        AUTH_FAILURE_LIMIT="3/hour",
        WEB_CONCURRENCY="2",
    )
    guesses = [keys.generate_key() for _ in range(5)]
    for key in (plain, hashed):
        for path in (PROTECTED, "/v1/whoami"):
            answer = api.get(path, key)
            assert answer.status == 200, answer.text
        assert api.get("/v1/whoami", key).json()["fingerprint"] == keys.fingerprint(key)
    statuses = [api.get(PROTECTED, guess, client_ip=ATTACKER).status for guess in guesses]
    assert statuses == [401] * 3 + [429] * 2
    # Over the limit as well: a refused request must not leak the key either.
    for _ in range(8):
        api.get(PROTECTED, plain)
    assert api.get(PROTECTED, plain).status == 429

    contents = redis_server.contents()
    for key in (plain, hashed):
        fingerprint = keys.fingerprint(key)
        assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
        assert counters_of(contents, "key", fingerprint), (fingerprint, contents)
    for guess in guesses:
        assert not counters_of(contents, "key", keys.fingerprint(guess)), contents
    assert_no_raw_key(redis_server, keys, [plain, hashed, *guesses])


def test_each_request_is_one_round_trip_to_redis(serve, redis_server, keys):
    """Once each worker has loaded the script: one script call per keyed request, admitted or
    refused, and per failed authentication; nothing else, and nothing for an open route."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT="12/hour",
        AUTH_FAILURE_LIMIT="100/hour",
        WEB_CONCURRENCY="2",
    )
    for worker in (0, 1):  # a worker's first call loads the script into Redis
        assert api.to(worker, PROTECTED, key).status == 200
    before = redis_server.last_command_id()

    keyed = [api.to(sent % 2, PROTECTED, key).status for sent in range(12)]
    guessed = [api.to(sent % 2, PROTECTED, keys.generate_key(), ATTACKER).status for sent in (0, 1)]
    missing = api.get(PROTECTED).status
    opened = [api.get(path).status for path in ("/health", "/openapi.json")]

    assert keyed == [200] * 10 + [429] * 2
    assert guessed == [401, 401] and missing == 401 and opened == [200, 200]
    commands = redis_server.app_commands(after=before)
    assert len(commands) == 12 + 2 + 1, commands
    assert {tuple(command.split()[:2]) for command in commands} == {
        tuple(commands[0].split()[:2])
    }, commands
    assert commands[0].startswith(b"EVALSHA "), commands


ROUTE_WITH_ITS_OWN_LIMIT = """

from .ratelimit import rate_limit


@v1.get("/reports")
@require_api_key
@rate_limit("3/hour")
def reports():
    return {"reports": []}
"""


def test_a_route_limit_counts_per_key_and_route_across_workers(
    serve, redis_server, keys, default_project, project_copy
):
    """An owner's view with @rate_limit("3/hour"): each key gets 3 from both workers
    together, its own limit counts the same requests, and a request that touches both
    limits is still one round trip."""
    root = project_copy(default_project)
    (api_py,) = root.glob("src/*/api.py")
    api_py.write_text(api_py.read_text(encoding="utf-8") + ROUTE_WITH_ITS_OWN_LIMIT, "utf-8")
    first, second, warm = (keys.generate_key() for _ in range(3))
    api = serve(
        Baked(root=root, context=default_project.context),
        API_KEYS=",".join(keys.hashed_entry(key) for key in (first, second, warm)),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT=KEY_LIMIT,
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )
    for worker in (0, 1):  # a worker's first call loads the script into Redis
        assert api.to(worker, PROTECTED, warm).status == 200
    before = redis_server.last_command_id()

    reports = [api.to(sent % 2, "/v1/reports", first) for sent in range(4)]
    assert [answer.status for answer in reports] == [200, 200, 200, 429], reports
    assert reports[-1].json()["error"] == "rate_limited", reports[-1].text
    # The headers tell of the limit closest to running out: the route's.
    assert [answer.headers["X-RateLimit-Limit"] for answer in reports] == ["3"] * 4
    assert [answer.headers["X-RateLimit-Remaining"] for answer in reports] == ["2", "1", "0", "0"]
    # The same key elsewhere: its own limit only, which counted the four.
    elsewhere = api.get(PROTECTED, first)
    assert elsewhere.status == 200, elsewhere.text
    assert elsewhere.headers["X-RateLimit-Limit"] == "10"
    assert elsewhere.headers["X-RateLimit-Remaining"] == "5"
    # Another key on the same route has a count of its own.
    other = api.get("/v1/reports", second)
    assert other.status == 200 and other.headers["X-RateLimit-Remaining"] == "2", other.headers

    assert len(redis_server.app_commands(after=before)) == 4 + 1 + 1
    contents = redis_server.contents()
    first_fp, second_fp = keys.fingerprint(first), keys.fingerprint(second)
    assert list(counters_of(contents, "route", "v1.reports", first_fp).values()) == [4], contents
    assert list(counters_of(contents, "route", "v1.reports", second_fp).values()) == [1], contents
    assert list(counters_of(contents, "key", first_fp).values()) == [5], contents
    assert len(counters_of(contents, "route")) == 2, contents  # none for the other routes
    assert_no_raw_key(redis_server, keys, [first, second, warm])


@pytest.mark.parametrize("setup", ["cluster", "sentinel"])
def test_a_redis_cluster_or_sentinel_holds_the_counters_too(
    setup, default_project, package, ratelimit, redis_server, keys, tmp_path, request
):
    """redis+cluster:// and redis+sentinel:// work as one server does. A Cluster refuses a
    script whose keys span hash slots, so every counter shares one hash tag."""
    if setup == "cluster":
        shared: RedisServer = request.getfixturevalue("redis_cluster")
        url = shared.url
    else:
        sentinel = RedisSentinel(redis_server, tmp_path / "sentinel")
        request.addfinalizer(sentinel.stop)
        shared, url = redis_server, sentinel.url
    key, reader = keys.generate_key(), keys.generate_key()
    app = package.create_app(
        {
            "APP_ENV": "testing",
            "API_KEYS": f"{key},{reader}",
            "DATABASE_URL": migrated_database(
                default_project.root, default_project.package, tmp_path
            ),
            "RATELIMIT_STORAGE_URI": url,
            "RATELIMIT_DEFAULT": "2/hour",
            "AUTH_FAILURE_LIMIT": "1/hour",
        }
    )
    # A route with a limit of its own: a request there checks and counts three counters.
    require_api_key = importlib.import_module(f"{package.__name__}.auth").require_api_key
    app.add_url_rule(
        "/v1/reports",
        "reports",
        require_api_key(ratelimit.rate_limit("1/hour")(lambda: {"reports": []})),
    )
    client = app.test_client()
    header = str(default_project.context["api_key_header"])

    def get(presented: str, client_ip: str = OTHER_CLIENT, path: str = PROTECTED) -> int:
        return client.get(
            path,
            headers={header: presented},
            base_url="https://localhost",
            environ_base={"REMOTE_ADDR": client_ip},
        ).status_code

    assert [get(key) for _ in range(3)] == [200, 200, 429]
    assert [get(keys.generate_key(), ATTACKER) for _ in range(2)] == [401, 429]
    assert get(key, ATTACKER) == 429
    assert [get(reader, path="/v1/reports") for _ in range(2)] == [200, 429]
    names = list(shared.contents())
    # Two keys' counters, the route's and the attacker's failures, under the package's tag.
    assert len(names) == 4, names
    assert {hash_tag(name) for name in names} == {default_project.package.encode()}, names
    if setup == "cluster":
        slots = {shared.client.execute_command("CLUSTER", "KEYSLOT", name) for name in names}
        assert len(slots) == 1, slots


def test_the_redis_script_counts_as_the_memory_storage_does(ratelimit, redis_server):
    """The Lua script and MemoryStorage give the same windows for the same calls."""
    memory, shared = ratelimit.MemoryStorage(), ratelimit.RedisStorage(redis_server.url)
    counter = ratelimit.Counter
    guesses = counter("guesses", parse("3/minute"))
    key, daily = counter("key", parse("5/minute")), counter("key-daily", parse("50/day"))
    calls = [
        ((), [guesses]),  # a new window: count 1
        ((), [guesses]),
        ([guesses], [key, daily]),  # 2 < 3: counted
        ((), [guesses]),
        ([guesses], [key]),  # 3 >= 3: stops there, the key is not counted
        ([counter("unknown", parse("1/minute"))], [key]),  # a counter never hit reads 0
        ([counter("key", parse("10/minute")), guesses], ()),  # checks stop at the first full one
    ]
    for checked, counted in calls:
        began = time.time()
        expected, got = memory.hit(checked, counted), shared.hit(checked, counted)
        counts = [window.count for window in got]
        assert counts == [window.count for window in expected], (checked, counted)
        for window, expected_window in zip(got, expected, strict=True):
            assert abs(window.ends - expected_window.ends) < 1.5, (checked, counted)
            assert window.ends >= began - 0.01
    assert shared.hit((), [key])[0].count == 3


def key_record(keys: ModuleType):
    """The record of a fresh key, as the key ring would hand it to the limiter."""
    return keys.KeyRecord(name="busy", fingerprint=keys.fingerprint(keys.generate_key()))


def test_two_limiters_sharing_redis_admit_exactly_the_limit(ratelimit, redis_server, keys):
    """Two workers' limiters, eight threads each, 640 requests of one key with a limit of 100,
    all at once: each has a place of its own in the count, and exactly 100 are admitted."""
    limiters = [ratelimit.RateLimiter(redis_server.url, "100/hour", "5/hour") for _ in range(2)]
    record = key_record(keys)
    admitted: list[int] = []
    refused: list[Exception] = []

    def serve(limiter) -> None:
        for _ in range(40):
            try:
                admitted.append(limiter.admit(OTHER_CLIENT, record, "v1.secure_data", ())[1].count)
            except ratelimit.RateLimited as refusal:
                refused.append(refusal)

    threads = [threading.Thread(target=serve, args=(limiters[n % 2],)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(admitted) == list(range(1, 101))
    assert len(refused) == 540
    assert {refusal.headers["X-RateLimit-Remaining"] for refusal in refused} == {"0"}
    counters = counters_of(redis_server.contents(), "key", record.fingerprint)
    assert list(counters.values()) == [640], counters


def test_a_client_cut_off_by_one_worker_is_refused_by_another_at_once(
    ratelimit, redis_server, keys
):
    """A worker keeps no count of its own: a client another worker cut off is refused on its
    next request, which counts on no key; a Redis that went away fails the next request, and
    once back it counts again from there."""
    here, there = (ratelimit.RateLimiter(redis_server.url, "100/hour", "5/hour") for _ in "ab")
    record = key_record(keys)

    def admit(client: str) -> int:
        return here.admit(client, record, "v1.secure_data", ())[1].count

    assert admit(ATTACKER) == 1
    for _ in range(5):
        there.count_failure(ATTACKER)  # five failures: the last one the cap lets through
    with pytest.raises(ratelimit.RateLimited) as refusal:
        admit(ATTACKER)
    assert 1 <= int(refusal.value.headers["Retry-After"]) <= 3600
    with pytest.raises(ratelimit.RateLimited):
        there.count_failure(ATTACKER)
    assert admit(OTHER_CLIENT) == 2

    redis_server.stop()
    with pytest.raises(ratelimit.RateLimitUnavailable):
        admit(OTHER_CLIENT)
    with pytest.raises(ratelimit.RateLimitUnavailable):
        there.count_failure(OTHER_CLIENT)
    redis_server.start()
    assert admit(OTHER_CLIENT) == 1


def test_redis_forgets_a_window_when_it_ends(ratelimit, redis_server):
    """A window starts with its first hit, later hits do not stretch it, and Redis drops the
    counter when it ends: it holds the current windows only, however many clients came."""
    storage = ratelimit.RedisStorage(redis_server.url)
    storage.hit((), [ratelimit.Counter("warm-up", parse("5/second"))])  # loads the script
    counters = [ratelimit.Counter(f"client-{n}", parse("5/second")) for n in range(50)]
    began = time.monotonic()
    first = storage.hit((), counters)
    time.sleep(0.4)
    again = storage.hit((), counters)

    assert [window.count for window in again] == [2] * 50
    # A window stretched by the second hit would end 0.4 s later, with 1000 ms left.
    for window, first_window in zip(again, first, strict=True):
        assert window.ends < first_window.ends + 0.2, (window, first_window)
    assert all(redis_server.client.pttl(counter.name) <= 650 for counter in counters)
    time.sleep(max(0.0, began + 1.1 - time.monotonic()))
    assert redis_server.client.exists(*(counter.name for counter in counters)) == 0
    assert [window.count for window in storage.hit((), counters[:1])] == [1]


@pytest.mark.parametrize(
    ("storage", "workers", "warns"),
    [(None, "2", True), ("memory://", "2", True), ("memory://", "1", False), ("redis", "2", False)],
    ids=["default-2-workers", "memory-2-workers", "memory-1-worker", "redis-2-workers"],
)
def test_gunicorn_warns_when_workers_count_separately(serve, request, storage, workers, warns):
    """More than one worker on memory://: one WARNING at start-up, from the master."""
    if storage == "redis":
        storage = request.getfixturevalue("redis_server").url
    api = serve(RATELIMIT_STORAGE_URI=storage, WEB_CONCURRENCY=workers)
    assert api.server.stop() == 0, api.server.output()
    warnings = log_lines(api.server, WORKERS_WARNING)
    if warns:
        assert len(warnings) == 1, api.server.output()
        assert "WARNING" in warnings[0] and "redis://" in warnings[0], warnings
    else:
        assert not warnings, api.server.output()


# Owners' limits


MONTH = 30 * 24 * 3600  # `limits`' month, in seconds


@dataclass(frozen=True)
class Registry:
    """A key registry that the project's `flask db upgrade` made, changed by its own
    `flask keys` (from the project installed: the command is a plugin of its metadata)."""

    url: str
    env: dict[str, str]
    directory: Path

    def keys(self, *arguments: str) -> str:
        """``flask keys ARGUMENTS``; its standard output (a new key, for create)."""
        result = run([*tool("flask"), "keys", *arguments], cwd=self.directory, env=self.env)
        assert result.returncode == 0, output(result)
        return result.stdout.strip()


@pytest.fixture
def key_registry(default_project: Baked, install, tmp_path) -> Registry:
    directory = tmp_path / "registry"
    directory.mkdir()
    url = migrated_database(default_project.root, default_project.package, directory)
    env = flask_env(default_project.package, install(default_project), DATABASE_URL=url)
    return Registry(url, env, directory)


def test_an_owner_limit_is_shared_by_its_keys_across_two_workers(
    serve, redis_server, keys, key_registry
):
    """`flask keys owner-limit acme 40/hour`; two keys of acme, sent by turns to each worker,
    then 60 at once from 10 threads to both: exactly 40 admitted in all, each with a place
    of its own in the owner's count, every later one refused; globex is not held back."""
    first = key_registry.keys("create", "acme-web", "--owner", "acme")
    second = key_registry.keys("create", "acme-ci", "--owner", "acme")
    other = key_registry.keys("create", "globex-web", "--owner", "globex")
    key_registry.keys("owner-limit", "acme", "40/hour")
    api = serve(
        DATABASE_URL=key_registry.url,
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT="1000/hour",
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )

    # By turns: each worker reports the other's requests of the other key too.
    in_turn = [api.to(sent % 2, PROTECTED, (first, second)[sent // 2 % 2]) for sent in range(8)]
    assert [answer.status for answer in in_turn] == [200] * 8
    assert [answer.headers["RateLimit"].split(";t=")[0] for answer in in_turn] == [
        f'"owner";r={40 - sent}' for sent in range(1, 9)
    ]
    assert in_turn[0].headers["RateLimit-Policy"] == '"key";q=1000;w=3600, "owner";q=40;w=3600'
    with ThreadPoolExecutor(max_workers=10) as pool:
        at_once = list(pool.map(lambda n: api.get(PROTECTED, (first, second)[n % 2]), range(60)))

    answers = in_turn + at_once
    admitted = [answer for answer in answers if answer.status == 200]
    refused = [answer for answer in answers if answer.status != 200]
    assert len(admitted) == 40 and {answer.status for answer in refused} == {429}
    places = sorted(40 - int(answer.headers["X-RateLimit-Remaining"]) for answer in admitted)
    assert places == list(range(1, 41)), places
    for answer in refused:
        assert answer.json()["error"] == "rate_limited", answer.text
        assert answer.headers["RateLimit"].startswith('"owner";r=0;t='), answer.headers
        assert 1 <= int(answer.headers["Retry-After"]) <= 3600
    elsewhere = api.get(PROTECTED, other)
    assert elsewhere.status == 200, elsewhere.text
    assert elsewhere.headers["RateLimit-Policy"] == '"key";q=1000;w=3600'

    # One counter for the owner, named by the owner, that counted every request once.
    contents = redis_server.contents()
    assert list(counters_of(contents, "owner", "acme").values()) == [68], contents
    assert len(counters_of(contents, "owner")) == 1, contents
    assert_no_raw_key(redis_server, keys, [first, second, other])


def test_a_monthly_owner_limit_outlives_a_gunicorn_restart(serve, redis_server, key_registry):
    """`flask keys owner-limit tier 6/month`: four requests, gunicorn stopped and started
    again on the same Redis, and the count goes on from four; the window still ends a month
    after its first request."""
    key = key_registry.keys("create", "tier-web", "--owner", "tier")
    key_registry.keys("owner-limit", "tier", "6/month")
    settings = {
        "DATABASE_URL": key_registry.url,
        "RATELIMIT_STORAGE_URI": redis_server.url,
        "RATELIMIT_DEFAULT": "1000/hour",
        "AUTH_FAILURE_LIMIT": NO_FAILURE_LIMIT,
        "WEB_CONCURRENCY": "1",
    }
    began = time.time()
    before = serve(**settings)
    first = [before.get(PROTECTED, key) for _ in range(4)]
    assert [answer.status for answer in first] == [200] * 4
    assert f'"owner";q=6;w={MONTH}' in first[0].headers["RateLimit-Policy"]
    assert first[-1].headers["RateLimit"].split(";t=")[0] == '"owner";r=2'
    assert before.server.stop() == 0, before.server.output()

    after = serve(**settings)
    then = [after.get(PROTECTED, key) for _ in range(3)]

    assert [answer.status for answer in then] == [200, 200, 429], [a.text for a in then]
    assert [answer.headers["X-RateLimit-Remaining"] for answer in then] == ["1", "0", "0"]
    ends = int(then[-1].headers["X-RateLimit-Reset"])
    assert began + MONTH - 5 <= ends <= time.time() + MONTH + 1, (began, ends)
    assert int(then[-1].headers["Retry-After"]) >= MONTH - 60
    contents = redis_server.contents()
    [(name, count)] = counters_of(contents, "owner", "tier").items()
    assert count == 7
    assert MONTH - 60 <= redis_server.client.ttl(name) <= MONTH
