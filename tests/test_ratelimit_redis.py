"""Rate limits against a real Redis: one count for every worker, fail closed, no raw key.

The default project runs under gunicorn as documented (production, from the
project root) with RATELIMIT_STORAGE_URI pointing at a redis-server that each
test starts on a free loopback port, persisting nothing. Requests go over real
sockets, each on a fresh connection; ``X-Forwarded-Proto: https`` with
TRUSTED_PROXIES=1 plays the TLS-terminating proxy, and ``X-Forwarded-For``
picks the client IP the app sees.

Which sync worker accepts a connection is up to the kernel. To be sure that
both workers answer, a test *holds* one: it opens a connection and sends
nothing yet, so the worker that accepted it waits on it while the other one
takes every new connection; the held request is sent afterwards, and answered
by the held worker.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import redis
import requests

from bakery import (
    Baked,
    Server,
    free_port,
    gunicorn_command,
    gunicorn_env,
    load_keys_module,
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
REDIS_START_TIMEOUT = 10


# Redis


class RedisServer:
    """A throw-away redis-server on a loopback port: nothing saved, every command logged.

    The slow log with a threshold of 0 µs keeps every command with its
    arguments, so a test can read back every key name the app ever used,
    even one that expired or was deleted since.
    """

    def __init__(self, binary: str, port: int, workdir: Path, *, cluster: bool = False) -> None:
        self.binary, self.port, self.workdir, self.cluster = binary, port, workdir, cluster
        self.url = f"redis+cluster://127.0.0.1:{port}" if cluster else f"redis://127.0.0.1:{port}/0"
        self.bus_port = free_port() if cluster else None
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
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
        deadline = time.monotonic() + REDIS_START_TIMEOUT
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
        pytest.fail(f"redis-server did not answer PING within {REDIS_START_TIMEOUT}s")

    def _serve_every_slot(self) -> None:
        self.client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + REDIS_START_TIMEOUT
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
        deadline = time.monotonic() + REDIS_START_TIMEOUT
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

    def hold(self) -> Held:
        """Keep one worker waiting on a connection that has sent nothing yet."""
        return Held(self, http.client.HTTPConnection("127.0.0.1", self.port, timeout=10))


@dataclass
class Held:
    api: Api
    connection: http.client.HTTPConnection

    def __post_init__(self) -> None:
        self.connection.connect()

    def get(self, path: str, key: str | None = None, client_ip: str | None = None) -> Answer:
        """Send the request at last: the worker that was held answers it."""
        try:
            self.connection.request("GET", path, headers=self.api.headers(key, client_ip))
            response = self.connection.getresponse()
            return Answer(response.status, response.headers, response.read().decode())
        finally:
            self.connection.close()


@pytest.fixture
def serve(default_project: Baked, start, tmp_path):
    """``serve(**settings)`` -> Api: the default project under gunicorn, until teardown."""

    def _serve(**settings: str) -> Api:
        port = free_port()
        workers = settings.pop("WEB_CONCURRENCY")  # every test says how many it needs
        settings = {"TRUSTED_PROXIES": "1", **settings}
        env = gunicorn_env(default_project, port, tmp_path, **settings)
        env = {name: value for name, value in env.items() if value is not None}
        env["WEB_CONCURRENCY"] = workers
        server = start(gunicorn_command(default_project), default_project.root, env)
        api = Api(server, port, str(default_project.context["api_key_header"]))
        wait_until_healthy(server, api.base)
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
    """The default project's ratelimit.py: its counters, for tests against Redis alone."""
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


def counters_of(contents: Mapping[bytes, bytes], kind: str, identifier: str) -> dict[str, int]:
    """The limiter's counters for one key fingerprint or one client IP."""
    marker = f":{kind}:{identifier}:".encode()
    return {name.decode(): int(value) for name, value in contents.items() if marker in name}


def log_lines(server: Server, *words: str) -> list[str]:
    return [line for line in server.output().splitlines() if all(word in line for word in words)]


# Tests


def test_two_workers_share_one_limit_through_redis(serve, redis_server, keys):
    """RATELIMIT_DEFAULT=10/hour, two workers: 10 answers in all, then 429 from either worker."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT=KEY_LIMIT,
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )

    # Nine requests to one worker while the other is held, then the held one's:
    # it can only answer 200 with Remaining 0 if it counted the other's nine.
    held = api.hold()
    answers = [api.get(PROTECTED, key) for _ in range(9)]
    answers.append(held.get(PROTECTED, key))
    # Then six over the limit, again five to one worker and the last to the other.
    held = api.hold()
    answers += [api.get(PROTECTED, key) for _ in range(5)]
    answers.append(held.get(PROTECTED, key))

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

    # One counter in Redis, named by the key's fingerprint; no raw key anywhere.
    counters = counters_of(redis_server.contents(), "key", keys.fingerprint(key))
    assert len(counters) == 1 and min(counters.values()) >= 10, counters
    assert_no_raw_key(redis_server, keys, [key])
    assert api.server.stop() == 0, api.server.output()
    assert not log_lines(api.server, WORKERS_WARNING), api.server.output()


def test_two_workers_with_leases_admit_a_busy_client_up_to_its_limit(serve, redis_server, keys):
    """RATELIMIT_DEFAULT=200/hour, two workers, 260 requests back to back: the workers count
    them a lease at a time, in fewer round trips than requests, and never admit more than 200."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI=redis_server.url,
        RATELIMIT_DEFAULT="200/hour",
        AUTH_FAILURE_LIMIT=NO_FAILURE_LIMIT,
        WEB_CONCURRENCY="2",
    )
    held = api.hold()  # the held worker answers once the other has taken a lease or two
    answers = [api.get(PROTECTED, key) for _ in range(20)]
    answers.append(held.get(PROTECTED, key))
    answers += [api.get(PROTECTED, key) for _ in range(239)]

    statuses = [answer.status for answer in answers]
    assert set(statuses) == {200, 429}, statuses
    admitted = statuses.count(200)
    # Never more than the limit. A worker's lease holds at most 200 // 16 = 12 requests
    # counted ahead, spent if that worker is sent more within a second (the kernel may
    # hand every connection to the other one meanwhile): at most 24 counted unused.
    assert 200 - 2 * 12 <= admitted <= 200, statuses
    assert statuses[: 200 - 2 * 12] == [200] * (200 - 2 * 12)
    # Each admitted request had its own place in the count.
    places = [200 - int(answer.headers["X-RateLimit-Remaining"]) for answer in answers]
    admitted_places = [
        place for place, status in zip(places, statuses, strict=True) if status == 200
    ]
    assert len(set(admitted_places)) == admitted and max(admitted_places) <= 200, places
    calls = script_calls(redis_server)
    assert calls < len(answers) / 2, calls
    assert_no_raw_key(redis_server, keys, [key])
    assert api.server.stop() == 0, api.server.output()


def test_memory_storage_counts_per_worker(serve, keys):
    """The control for the test above: with memory://, the held worker has not seen the others."""
    key = keys.generate_key()
    api = serve(
        API_KEYS=keys.hashed_entry(key),
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_DEFAULT=KEY_LIMIT,
        WEB_CONCURRENCY="2",
    )
    held = api.hold()
    remaining = [api.get(PROTECTED, key).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["9", "8", "7"]
    assert held.get(PROTECTED, key).headers["X-RateLimit-Remaining"] == "9"


def test_failed_authentications_stop_a_brute_force_loop(serve, redis_server, keys):
    """AUTH_FAILURE_LIMIT=5/hour: five guesses get 401, every later request of that IP 429,
    a right guess included; the attacker's own key too, once its lease's second is over."""
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
    # The attacker holds a key of its own, busy enough for leases on the workers.
    assert {api.get(PROTECTED, own, client_ip=ATTACKER).status for _ in range(8)} == {200}

    answers = [api.get(PROTECTED, guess, client_ip=ATTACKER) for guess in guesses]

    assert [answer.status for answer in answers] == [401] * 5 + [429] * 25
    assert {answer.json()["error"] for answer in answers[:5]} == {"invalid_api_key"}
    for answer in answers[5:]:
        assert answer.json()["error"] == "rate_limited", answer.text
        assert 1 <= int(answer.headers["Retry-After"]) <= 3600, answer.headers
    # The attacker's IP is refused even with a valid key it guessed; another client is not.
    blocked = api.get(PROTECTED, valid, client_ip=ATTACKER)
    assert blocked.status == 429 and blocked.json()["error"] == "rate_limited", blocked.text
    time.sleep(1.1)  # RedisCounters.LEASE_SECONDS: no lease of its own key is left
    assert {api.get(PROTECTED, own, client_ip=ATTACKER).status for _ in range(4)} == {429}
    assert api.get(PROTECTED, valid, client_ip=OTHER_CLIENT).status == 200
    assert api.get("/health", client_ip=ATTACKER).status == 200
    assert api.get("/health").status == 200

    # Only five guesses were ever checked (and logged): the loop learned nothing more.
    assert api.server.stop() == 0, api.server.output()
    failures = log_lines(api.server, "authentication failed")
    assert len(failures) == 5, "\n".join(failures)
    checked = {keys.fingerprint(guess) for guess in guesses[:5]}
    assert all(any(fp in line for fp in checked) for line in failures), failures
    contents = redis_server.contents()
    assert counters_of(contents, "auth-failures", ATTACKER), contents
    assert not counters_of(contents, "auth-failures", OTHER_CLIENT), contents
    assert_no_raw_key(redis_server, keys, [valid, own, *guesses])


def test_redis_stopped_mid_run_fails_closed_and_recovers(serve, redis_server, keys):
    """No Redis: protected routes 503 (one ERROR logged), open routes 200; Redis back: 200."""
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
        assert "Traceback" not in answer.text
    assert api.get("/health").status == 200
    openapi = api.get("/openapi.json")
    assert openapi.status == 200 and openapi.json()["openapi"].startswith("3.1"), openapi.text
    assert api.server.process.poll() is None, api.server.output()
    errors = log_lines(api.server, "ERROR")
    assert len(errors) == 1 and "storage" in errors[0], api.server.output()

    redis_server.start()
    deadline = time.monotonic() + 5
    while (status := api.get(PROTECTED, key).status) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200, api.server.output()

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


@pytest.mark.parametrize("setup", ["cluster", "sentinel"])
def test_a_redis_cluster_or_sentinel_holds_the_counters_too(
    setup, default_project, package, redis_server, keys, tmp_path, request
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
    key = keys.generate_key()
    app = package.create_app(
        {
            "APP_ENV": "testing",
            "API_KEYS": key,
            "API_KEYS_FILE": str(tmp_path / "no-registry.toml"),
            "RATELIMIT_STORAGE_URI": url,
            "RATELIMIT_DEFAULT": "2/hour",
            "AUTH_FAILURE_LIMIT": "1/hour",
        }
    )
    client = app.test_client()
    header = str(default_project.context["api_key_header"])

    def get(presented: str, client_ip: str = OTHER_CLIENT) -> int:
        return client.get(
            PROTECTED,
            headers={header: presented},
            base_url="https://localhost",
            environ_base={"REMOTE_ADDR": client_ip},
        ).status_code

    assert [get(key) for _ in range(3)] == [200, 200, 429]
    assert [get(keys.generate_key(), ATTACKER) for _ in range(2)] == [401, 429]
    assert get(key, ATTACKER) == 429
    names = list(shared.contents())
    tag = f"{{{default_project.package}}}:".encode()
    assert len(names) == 2 and all(name.startswith(tag) for name in names), names


def test_the_redis_script_counts_as_the_memory_counters_do(ratelimit, redis_server):
    """The Lua script and ProcessCounters give the same windows for the same calls."""
    memory, shared = ratelimit.ProcessCounters(), ratelimit.RedisCounters(redis_server.url)
    calls = [
        ((), [("guesses", 60, 3)]),  # a new window: count 1
        ((), [("guesses", 60, 3)]),
        ([("guesses", 3)], [("key", 60, 5), ("key-daily", 86400, 50)]),  # 2 < 3: counted
        ((), [("guesses", 60, 3)]),
        ([("guesses", 3)], [("key", 60, 5)]),  # 3 >= 3: stops there, the key is not counted
        ([("unknown", 1)], [("key", 60, 5)]),  # a counter never hit reads 0
        ([("key", 10), ("guesses", 3)], ()),  # checks stop at the first full one only
    ]
    for checks, counts in calls:
        began = time.time()
        expected, got = memory.hit(checks, counts), shared.hit(checks, counts)
        assert [count for count, _ in got] == [count for count, _ in expected], (checks, counts)
        for (_, ends), (_, expected_ends) in zip(got, expected, strict=True):
            assert abs(ends - expected_ends) < 1.5, (checks, counts, ends, expected_ends)
            assert ends >= began - 0.01
    assert shared.hit((), [("key", 60, 5)])[0][0] == 3


def script_calls(redis_server: RedisServer) -> int:
    return sum(command.startswith((b"EVAL", b"EVALSHA")) for command in redis_server.commands())


def test_leases_never_let_two_workers_exceed_a_limit(ratelimit, redis_server):
    """Two workers' counters take leases for one busy client of a 100-hit limit, in turns of
    uneven bursts: together they admit exactly hits 1 to 100 (each once), then refuse."""
    workers = [ratelimit.RedisCounters(redis_server.url) for _ in range(2)]
    for counters in workers:
        counters.LEASE_SECONDS = 3600  # no lease ends by age while the test runs
    checks, counts = (("failures", 5),), (("key", 3600, 100),)

    admitted, refused = [], 0
    for turn in range(60):
        for _ in range(turn % 7 + 1):  # bursts of 1 to 7 requests, to each worker in turn
            failures, (count, _) = workers[turn % 2].take(checks, counts)
            assert failures[0] == 0
            if count <= 100:
                admitted.append(count)
            else:
                refused += 1

    assert sorted(admitted) == list(range(1, 101))
    assert refused > 100
    # Leases are sized by what is left: near the end each hit is counted alone. Once
    # refused, each worker repeats its refusal without Redis until its lease ends.
    assert int(redis_server.client.get("key")) == 100 + len(workers)
    assert script_calls(redis_server) < 100


def test_a_busy_client_needs_few_round_trips(ratelimit, redis_server):
    """500 requests of one client with a key far from its limit: about a dozen round trips,
    and the windows still count the hits one by one."""
    counters = ratelimit.RedisCounters(redis_server.url)
    counters.LEASE_SECONDS = 3600
    checks, counts = (("failures", 5),), (("key", 3600, 1_000_000), ("key-daily", 86400, 10**7))

    windows = [counters.take(checks, counts) for _ in range(500)]

    assert [window[1][0] for window in windows] == list(range(1, 501))
    assert [window[2][0] for window in windows] == list(range(1, 501))
    calls = script_calls(redis_server)
    assert calls <= 20, calls  # leases of 1, 2, 4 ... up to MAX_LEASE (64)
    counted = int(redis_server.client.get("key"))
    assert 500 <= counted < 500 + counters.MAX_LEASE, counted
    assert int(redis_server.client.get("key-daily")) == counted


def test_a_lease_rechecks_its_client_within_its_period(ratelimit, redis_server):
    """A client cut off on another worker is refused here once its lease's period ends;
    a Redis that went away, from the first request that needs it."""
    counters = ratelimit.RedisCounters(redis_server.url)
    counters.LEASE_SECONDS = 0.5
    checks, counts = (("failures", 5),), (("key", 3600, 1000),)
    assert len(counters.take(checks, counts)) == 2  # a lease of 1 hit
    assert len(counters.take(checks, counts)) == 2  # spent at once: a lease of 2
    calls = script_calls(redis_server)

    redis_server.client.set("failures", 5, ex=60)  # another worker cut the client off
    assert len(counters.take(checks, counts)) == 2  # the rest of the lease
    assert script_calls(redis_server) == calls
    time.sleep(0.6)
    assert counters.take(checks, counts) == [(5, pytest.approx(time.time() + 60, abs=2))]

    redis_server.client.delete("failures")
    for _ in range(4):  # leases of 1 and 2, spent at once, then one of 4: 3 hits left
        counters.take(checks, counts)
    redis_server.stop()
    with pytest.raises(ratelimit.RateLimitUnavailable):
        counters.hit((), (("other", 60, 10),))
    with pytest.raises(ratelimit.RateLimitUnavailable):  # the lease went with the storage
        counters.take(checks, counts)


def test_old_leases_are_swept_and_hand_back_what_they_did_not_serve(ratelimit, redis_server):
    """A worker keeps leases of the last few seconds' clients only, however many came, and
    the hits a swept lease did not serve are counted no more."""
    counters = ratelimit.RedisCounters(redis_server.url)
    counters.LEASE_SECONDS = 0.05
    counts = (("key", 3600, 1000),)
    for client in range(50):  # a lease of 1, spent at once, then one of 2: 1 hit left
        for _ in range(2):
            counters.take(((f"failures:{client}", 5),), counts)
    assert len(counters._leases) == 50
    assert int(redis_server.client.get("key")) == 150
    time.sleep(0.11)  # two lease periods: these leases no longer size the next ones
    counters._next_sweep = 0  # as when SWEEP_EVERY has passed
    counters.take((("failures:new", 5),), counts)
    assert list(counters._leases) == [((("failures:new", 5),), counts)]
    assert int(redis_server.client.get("key")) == 100 + 1  # served, and the new one


def test_a_client_in_bursts_gets_its_whole_limit(ratelimit, redis_server):
    """Bursts of 13 requests, each after a pause of two lease periods: every lease's unserved
    hits are handed back with the next one, so the client gets exactly its 300."""
    counters = ratelimit.RedisCounters(redis_server.url)
    counters.LEASE_SECONDS = 0.05
    checks, counts = (("failures", 5),), (("key", 3600, 300),)
    admitted = 0
    while True:
        for _ in range(13):
            _, (count, _) = counters.take(checks, counts)
            if count > 300:
                break
            admitted += 1
        else:
            time.sleep(0.11)
            continue
        break
    assert admitted == 300
    assert int(redis_server.client.get("key")) == 301  # and the one refused


def test_threads_of_one_worker_take_one_lease_at_a_time(ratelimit, redis_server):
    """Eight threads of one worker (gthread) serve one busy client: while one takes the next
    lease the others count a hit each, so no lease is replaced before it is spent."""
    counters = ratelimit.RedisCounters(redis_server.url)
    counters.LEASE_SECONDS = 3600
    checks, counts = (("failures", 5),), (("key", 3600, 10**6),)
    served = []

    def serve() -> None:
        for _ in range(300):
            served.append(counters.take(checks, counts)[1][0])

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(served)) == len(served) == 2400  # each its own place in the count
    counted = int(redis_server.client.get("key"))
    assert 0 <= counted - len(served) <= counters.MAX_LEASE, counted  # only the last lease


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
