"""Two hosts on one PostgreSQL and one Redis: a key or an item made on one is seen on the other.

Each host is a deployment of the default project as its README describes one:
a working directory of its own holding the project's ``gunicorn.conf.py`` and
``.flaskenv`` (no ``.env``: production has none), its own copy of the installed
package, and ``flask db upgrade`` run there against the shared DATABASE_URL.
It serves with gunicorn, 2 workers, APP_ENV=production, TRUSTED_PROXIES=1 and
RATELIMIT_STORAGE_URI at the shared Redis; every request carries
``X-Forwarded-Proto: https`` and ``X-Forwarded-For`` as from the TLS proxy.
Nothing else is shared: keys are managed with ``flask keys`` in one host's
directory and checked over HTTP on the other.

Both workers of a host are checked each time: each answers in turn while the
other is paused (SIGSTOP), as in test_ratelimit_redis.py, since which worker
accepts a connection is up to the kernel. The propagation times measured are printed
(``pytest -s``). The hosts are shared by this module's tests in one pytest
process; each test uses keys and owners of its own.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest
import requests
from test_ratelimit_redis import RedisServer, random_part, redis_binary

from bakery import (
    Baked,
    Server,
    booted_workers,
    clean_env,
    free_port,
    gunicorn_command,
    json_lines,
    load_keys_module,
    only_worker,
    output,
    run,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

WORKERS = 2
CLIENT_IP = "198.51.100.20"
# The promise: a change made on one host is honoured by every worker of every host.
PROPAGATION = 2.0
# Usage reaches the registry within this (each worker writes its counts every 30 s).
USAGE_DEADLINE = 60.0
# After the database comes back, /ready must say so within this.
RECOVERY = 5.0
OUTAGE = 3.0  # several refresh periods of every worker
REGISTRY_DOWN = "key registry unreachable"
# Generous limits: these tests send many keyed requests, and revoked keys are refused.
LIMITS = {"RATELIMIT_DEFAULT": "100000/hour", "AUTH_FAILURE_LIMIT": "100000/hour"}


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


@dataclass
class Host:
    """One deployment: its directory, its environment and its gunicorn."""

    name: str
    root: Path
    env: dict[str, str]
    port: int
    header: str
    cluster: Cluster
    server: Server | None = None
    workers: list[int] = field(default_factory=list)  # their process ids

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def flask(self, *arguments: str) -> str:
        """``flask ARGUMENTS`` in this host's directory; its standard output."""
        result = run([*tool("flask"), *arguments], cwd=self.root, env=self.env, timeout=120)
        assert result.returncode == 0, f"{self.name}: flask {' '.join(arguments)}\n{output(result)}"
        return result.stdout

    def keys(self, *arguments: str) -> str:
        """``flask keys ARGUMENTS``; a key it prints is remembered for the dump test."""
        printed = self.flask("keys", *arguments).strip()
        if arguments[0] in ("create", "rotate"):
            self.cluster.issued.append(printed)
        return printed

    def serve(self, package: Baked) -> None:
        """Start gunicorn as documented: ``gunicorn '<package>:create_app()'`` from here."""
        self.server = Server(gunicorn_command(package), self.root, self.env, self.root / "log")

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": CLIENT_IP}
        if key is not None:
            headers[self.header] = key
        return headers

    def get(self, path: str, key: str | None = None) -> Answer:
        """GET on a connection of its own."""
        response = requests.get(self.base + path, headers=self.headers(key), timeout=10)
        return self.cluster.count(key, Answer(response.status_code, response.text))

    def post(self, path: str, key: str, body: dict) -> Answer:
        response = requests.post(self.base + path, headers=self.headers(key), json=body, timeout=10)
        return self.cluster.count(key, Answer(response.status_code, response.text))

    def from_each_worker(self, path: str, key: str | None = None) -> list[Answer]:
        """GET answered once by each worker, in turn."""
        answers = []
        for worker in range(len(self.workers)):
            with only_worker(self.workers, worker):
                answers.append(self.get(path, key))
        return answers

    def log_since(self, mark: int) -> str:
        assert self.server is not None
        return self.server.output()[mark:]


@dataclass
class Cluster:
    """Two hosts, the database URL they share, and what the tests did through them."""

    url: str
    hosts: list[Host] = field(default_factory=list)
    operator: str = ""  # the first key, made before the servers could start
    issued: list[str] = field(default_factory=list)  # every key `flask keys` printed
    admitted: dict[str, int] = field(default_factory=dict)  # 200 answers per key
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str | None, answer: Answer) -> Answer:
        if key is not None and answer.status in (200, 201):
            with self.lock:
                self.admitted[key] = self.admitted.get(key, 0) + 1
        return answer


def follow(
    hosts: list[Host], path: str, key: str, expected: Callable[[Answer], bool], what: str
) -> dict[str, float]:
    """Seconds until each worker of each host answers as ``expected``: fail past PROPAGATION.

    Timed from now, just after the ``flask keys`` command that made the change exited.
    """
    began = time.monotonic()
    seen: dict[str, float] = {}
    last: dict[str, list[Answer]] = {}
    while len(seen) < len(hosts):
        for host in hosts:
            if host.name in seen:
                continue
            last[host.name] = host.from_each_worker(path, key)
            if all(expected(answer) for answer in last[host.name]):
                seen[host.name] = time.monotonic() - began
        elapsed = time.monotonic() - began
        assert elapsed <= PROPAGATION or len(seen) == len(hosts), (
            f"{what}: not honoured by every worker within {PROPAGATION}s: {last}"
        )
        time.sleep(0.02)
    assert max(seen.values()) <= PROPAGATION, (what, seen)
    print(f"{what}: " + ", ".join(f"host {name} {value:.2f}s" for name, value in seen.items()))
    return seen


def as_key(name: str, owner: str) -> Callable[[Answer], bool]:
    """An answer of /v1/whoami made with key NAME of OWNER."""

    def check(answer: Answer) -> bool:
        return answer.status == 200 and (answer.json()["name"], answer.json()["owner"]) == (
            name,
            owner,
        )

    return check


def refused(answer: Answer) -> bool:
    return answer.status == 401 and answer.json()["error"] == "invalid_api_key"


def listed(host: Host) -> dict[str, list[dict]]:
    """``flask keys list --json`` on a host: the entries by name."""
    entries: dict[str, list[dict]] = {}
    for entry in json.loads(host.keys("list", "--json")):
        entries.setdefault(entry["name"], []).append(entry)
    return entries


class Load(threading.Thread):
    """Keyed requests against every host in turn, each on a fresh connection, until stopped."""

    def __init__(self, hosts: list[Host], key: str) -> None:
        super().__init__(daemon=True)
        self.hosts, self.key = hosts, key
        self.answers: list[tuple[float, str, int]] = []  # when, host, status
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for host in self.hosts:
                try:
                    status = host.get("/v1/whoami", self.key).status
                except requests.RequestException as error:
                    status = -1
                    print(f"load: {host.name}: {error!r}")
                self.answers.append((time.monotonic(), host.name, status))
            time.sleep(0.05)

    def stop(self) -> list[tuple[float, str, int]]:
        self.done.set()
        self.join(timeout=30)
        return self.answers


# Fixtures


@pytest.fixture(scope="module")
def redis_for_hosts(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(bake) -> Baked:
    return bake()


@pytest.fixture(scope="module")
def keys_module(project) -> ModuleType:
    return load_keys_module(project.root)


@pytest.fixture(scope="module")
def cluster(project, install, postgres_server, redis_for_hosts, tmp_path_factory):
    """Two hosts on one new database: migrated by each, a first key, then both served."""
    postgres_server.ensure_running()
    shared = Cluster(url=postgres_server.database("hosts"))
    site = install(project)
    for name in ("A", "B"):
        root = tmp_path_factory.mktemp(f"host-{name}")
        # A deployment's working directory: the project's server settings, no .env.
        shutil.copy2(project.root / "gunicorn.conf.py", root)
        shutil.copy2(project.root / ".flaskenv", root)
        shutil.copytree(site, root / "site")  # its own copy of the installed package
        port = free_port()
        env = clean_env(
            PYTHONPATH=str(root / "site"),
            APP_ENV="production",
            TRUSTED_PROXIES="1",
            DATABASE_URL=shared.url,
            RATELIMIT_STORAGE_URI=redis_for_hosts.url,
            GUNICORN_BIND=f"127.0.0.1:{port}",
            WEB_CONCURRENCY=str(WORKERS),
            XDG_RUNTIME_DIR=str(root),
            **LIMITS,
        )
        host = Host(name, root, env, port, str(project.context["api_key_header"]), shared)
        host.flask("db", "upgrade")  # on B, the schema is already there: nothing to do
        shared.hosts.append(host)
    # Production refuses to serve without a key: the operator makes the first one.
    shared.operator = shared.hosts[0].keys("create", "operator", "--owner", "operations")
    try:
        for host in shared.hosts:
            host.serve(project)
        for host in shared.hosts:
            wait_until_healthy(host.server, host.base)
            host.workers = booted_workers(host.server, WORKERS)
        yield shared
    finally:
        for host in shared.hosts:
            if host.server is not None:
                host.server.stop()


@pytest.fixture
def traffic(cluster):
    """Other clients' requests meanwhile: busy workers refresh once a second, so a change
    may land just after a refresh, the slowest case to follow."""
    load = Load(cluster.hosts, cluster.operator)
    load.start()
    yield load
    assert {status for _, _, status in load.stop()} == {200}


# Tests


def test_the_second_hosts_upgrade_changes_nothing(cluster, postgres_server):
    """Both hosts are at the newest migration; upgrading again from B writes nothing."""
    b = cluster.hosts[1]
    heads = {host.name: host.flask("db", "current").strip() for host in cluster.hosts}
    assert heads["A"] == heads["B"] and heads["A"].endswith("(head)"), heads
    before = postgres_server.dump(cluster.url)
    b.flask("db", "upgrade")
    assert postgres_server.dump(cluster.url) == before
    assert "CREATE TABLE public.api_keys" in before, before


def test_a_key_created_on_one_host_is_honoured_by_the_other_within_2_seconds(cluster, traffic):
    a, b = cluster.hosts
    key = a.keys("create", "created-on-a", "--owner", "acme-create")
    follow([b, a], "/v1/whoami", key, as_key("created-on-a", "acme-create"), "create")


def test_a_key_rotated_on_one_host_works_on_the_other_and_the_old_one_keeps_name_and_owner(
    cluster, traffic, keys_module
):
    a, b = cluster.hosts
    old = a.keys("create", "rotating", "--owner", "acme-rotate")
    follow([b], "/v1/whoami", old, as_key("rotating", "acme-rotate"), "create for rotate")

    new = b.keys("rotate", "rotating", "--grace", "1h")
    follow([a, b], "/v1/whoami", new, as_key("rotating", "acme-rotate"), "rotate")

    # During the grace period the old key still answers as the same name and owner.
    for host in cluster.hosts:
        for answer in host.from_each_worker("/v1/whoami", old):
            assert as_key("rotating", "acme-rotate")(answer), (host.name, answer)
            assert answer.json()["fingerprint"] == keys_module.fingerprint(old)
    entries = listed(a)["rotating"]
    statuses = {entry["fingerprint"]: entry["status"] for entry in entries}
    assert statuses == {
        keys_module.fingerprint(new): "active",
        keys_module.fingerprint(old): "rotated",
    }, entries
    assert {entry["owner"] for entry in entries} == {"acme-rotate"}


def test_a_key_revoked_on_one_host_is_refused_by_both_within_2_seconds(cluster, traffic):
    """Revoking NAME on A refuses its key, and the predecessor in its grace period, everywhere."""
    a, b = cluster.hosts
    old = b.keys("create", "revoked-soon", "--owner", "acme-revoke")
    new = b.keys("rotate", "revoked-soon", "--grace", "1h")
    for key in (old, new):
        follow([a, b], "/v1/whoami", key, as_key("revoked-soon", "acme-revoke"), "before revoke")

    a.keys("revoke", "revoked-soon")
    follow([b, a], "/v1/whoami", new, refused, "revoke")
    for host in cluster.hosts:
        assert all(refused(answer) for answer in host.from_each_worker("/v1/whoami", old))
    assert {entry["status"] for entry in listed(b)["revoked-soon"]} == {"revoked"}


def test_keys_over_http_a_key_made_through_a_works_on_b_within_2_seconds(cluster, traffic):
    """POST /v1/keys on host A with a keys:admin key: the key works on every worker of B
    within 2 s; rotated and revoked through B, A follows. No answer or log holds a key
    but the one 201 that issued it."""
    a, b = cluster.hosts
    admin = a.keys("create", "provisioner", "--scope", "keys:admin")
    follow([a, b], "/v1/keys/provisioner", admin, lambda answer: answer.status == 200, "admin")
    marks = [len(host.server.output()) for host in cluster.hosts]

    created = a.post("/v1/keys", admin, {"name": "http-made", "owner": "acme-http"})
    assert created.status == 201, created.text
    key = created.json()["key"]
    follow([b, a], "/v1/whoami", key, as_key("http-made", "acme-http"), "create over HTTP")

    rotated = b.post("/v1/keys/http-made/rotate", admin, {"grace": "0"})
    assert rotated.status == 201, rotated.text
    new = rotated.json()["key"]
    follow([a, b], "/v1/whoami", new, as_key("http-made", "acme-http"), "rotate over HTTP")
    follow([a, b], "/v1/whoami", key, refused, "old key after rotate --grace 0 over HTTP")

    revoked = requests.delete(f"{b.base}/v1/keys/http-made", headers=b.headers(admin), timeout=10)
    assert revoked.status_code == 204, revoked.text
    follow([a, b], "/v1/whoami", new, refused, "revoke over HTTP")

    taken = a.post("/v1/keys", admin, {"name": "provisioner"})
    assert (taken.status, taken.json()["error"]) == (409, "conflict"), taken.text
    listing = b.get("/v1/keys?limit=100", admin)
    logs = "".join(host.log_since(mark) for host, mark in zip(cluster.hosts, marks, strict=True))
    for secret in (key, new, admin):
        assert secret not in listing.text and secret not in logs
    assert "by=key:provisioner" in logs


def test_broken_object_level_authorisation_items_follow_their_owner_across_hosts(cluster):
    """An item created through A is listed through B with another key of the same owner,
    and is invisible to another owner's key: absent from its list, 404 as a missing item."""
    a, b = cluster.hosts
    writer = a.keys("create", "items-writer", "--owner", "acme-items", "--scope", "items:write")
    reader = a.keys("create", "items-reader", "--owner", "acme-items", "--scope", "items:read")
    stranger = b.keys("create", "items-stranger", "--owner", "globex", "--scope", "items:read")
    follow([a], "/v1/whoami", writer, as_key("items-writer", "acme-items"), "items writer")
    follow([b], "/v1/whoami", reader, as_key("items-reader", "acme-items"), "items reader")
    follow([b], "/v1/whoami", stranger, as_key("items-stranger", "globex"), "items stranger")

    created = a.post("/v1/items", writer, {"name": "made through host A"})
    assert created.status == 201, created
    item = created.json()
    assert (item["owner"], item["created_by"]) == ("acme-items", "items-writer"), item

    for answer in b.from_each_worker("/v1/items", reader):
        assert answer.status == 200, answer
        assert item in answer.json()["items"], answer
        assert {entry["owner"] for entry in answer.json()["items"]} == {"acme-items"}
    assert b.get(f"/v1/items/{item['id']}", reader).json() == item

    others = b.get("/v1/items", stranger)
    assert others.status == 200 and others.json()["items"] == [], others
    theirs, missing = (
        b.get(f"/v1/items/{item_id}", stranger) for item_id in (item["id"], item["id"] + 10**9)
    )
    assert (theirs.status, theirs.json()) == (missing.status, missing.json()), (theirs, missing)
    assert theirs.status == 404 and theirs.json()["error"] == "not_found", theirs


def test_a_database_outage_keeps_known_keys_working_and_both_hosts_catch_up(
    cluster, postgres_server
):
    """Database stopped under load: known keys keep working on both hosts, /ready is 503,
    one ERROR per worker and no traceback; restarted: ready again, and new keys work."""
    a, b = cluster.hosts
    known = a.keys("create", "outage-known", "--owner", "acme-outage", "--scope", "items:read")
    follow([a, b], "/v1/whoami", known, as_key("outage-known", "acme-outage"), "before outage")
    marks = {host.name: len(host.server.output()) for host in cluster.hosts}

    load = Load(cluster.hosts, known)
    load.start()
    time.sleep(0.5)
    postgres_server.stop()
    stopped = time.monotonic()
    try:
        time.sleep(OUTAGE)
        for host in cluster.hosts:
            for answer in host.from_each_worker("/v1/whoami", known):
                assert as_key("outage-known", "acme-outage")(answer), (host.name, answer)
            for answer in host.from_each_worker("/ready"):
                assert answer.status == 503 and answer.json()["error"] == "not_ready", answer
            # A route that reads the database answers 503 too, never a 500.
            for answer in host.from_each_worker("/v1/items", known):
                assert answer.status == 503 and answer.json()["error"] == "not_ready", answer
    finally:
        postgres_server.start()
    restarted = time.monotonic()

    recovery: dict[str, float] = {}
    while len(recovery) < len(cluster.hosts):
        for host in cluster.hosts:
            if host.name not in recovery and all(
                answer.status == 200 for answer in host.from_each_worker("/ready")
            ):
                recovery[host.name] = time.monotonic() - restarted
        assert time.monotonic() - restarted < RECOVERY, f"/ready not 200 again: {recovery}"
        time.sleep(0.05)
    print("ready after restart: " + ", ".join(f"{k} {v:.2f}s" for k, v in recovery.items()))

    after = b.keys("create", "outage-after", "--owner", "acme-outage")
    follow([a, b], "/v1/whoami", after, as_key("outage-after", "acme-outage"), "after restart")
    answers = load.stop()

    during = [(host, status) for when, host, status in answers if stopped <= when <= restarted]
    assert len(during) >= 10 * len(cluster.hosts), f"too little load during the outage: {during}"
    assert {status for _, _, status in answers} == {200}, answers
    for host in cluster.hosts:
        log = host.log_since(marks[host.name])
        assert "Traceback" not in log, log
        errors = [line for line in json_lines(log) if line.get("level") == "ERROR"]
        # Each worker notices the outage once, however many requests it answers meanwhile.
        assert len(errors) == WORKERS, errors
        assert all(REGISTRY_DOWN in line["message"] for line in errors), errors
        assert sum(1 for name, _ in during if name == host.name) > WORKERS


def test_usage_reaches_the_registry_within_60_seconds(cluster):
    """Requests made with a key on both hosts add up in `flask keys list --json`, with its
    last-used time, within a minute; each worker writes its counts in batches."""
    a, b = cluster.hosts
    key = a.keys("create", "usage-counted", "--owner", "acme-usage")
    first_use = time.time()
    follow([a, b], "/v1/whoami", key, as_key("usage-counted", "acme-usage"), "create for usage")
    for host in cluster.hosts:
        for _ in range(3):
            host.from_each_worker("/v1/secure-data", key)
    sent = cluster.admitted[key]
    last_use = time.time()

    began = time.monotonic()
    while True:
        (entry,) = listed(b)["usage-counted"]
        if entry["requests"] == sent:
            break
        assert entry["requests"] < sent, entry
        assert time.monotonic() - began < USAGE_DEADLINE, (entry, sent)
        for host in cluster.hosts:
            # Other traffic, as a live API has: each worker refreshes, and so writes its counts.
            host.from_each_worker("/v1/whoami", cluster.operator)
        time.sleep(1)
    elapsed = time.monotonic() - began
    print(f"usage in the registry after {elapsed:.1f}s ({sent} requests)")
    last_used = entry["last_used"]
    assert last_used is not None, entry
    # Stored to the second: the last request's time, give or take that second.
    assert first_use - 1 <= datetime.fromisoformat(last_used).timestamp() <= last_use + 1, entry


def test_a_dump_of_the_database_holds_no_raw_key(cluster, postgres_server, keys_module):
    """pg_dump after the tests: every key issued is there as its sha256 digest, never raw."""
    a, b = cluster.hosts
    a.keys("create", "dumped", "--owner", "acme-dump")
    rotated = b.keys("rotate", "dumped", "--grace", "1h")
    follow([a, b], "/v1/whoami", rotated, as_key("dumped", "acme-dump"), "dump")

    dump = postgres_server.dump(cluster.url)
    assert len(cluster.issued) >= 3, cluster.issued
    for key in cluster.issued:
        assert keys_module.hashed_entry(key) in dump, "a key issued is missing from the dump"
        for secret in (key, random_part(keys_module, key)):
            assert secret not in dump, (
                f"a raw key is in the database ({keys_module.fingerprint(key)})"
            )
