"""Hostile requests against a real gunicorn, table-driven, over raw sockets.

The default project is installed and served as documented, in production, from a
private copy whose database is made by the real `flask db upgrade` and whose keys
are made with the real `flask keys` CLI: a valid key, a read-only one, one fenced
to an IP range, a revoked and an expired one. Each row of ATTACKS is one request
written byte by byte (duplicate headers, control characters, non-ASCII: things an
HTTP client library refuses to send), and the answer it must get, from the SPEC's
error table. Afterwards the servers still answer /health, their output holds no
key that was sent and no raw control character, and the database no key at all.

Some requests never reach the app: gunicorn refuses them itself (a header with a
control character, a header line over its 8190-byte limit) with its own small
HTML page. Those rows say so (``by_gunicorn``); the check is then that the app
did not answer (no X-Request-ID) and that the server lives on.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from bakery import (
    DATABASE,
    Baked,
    Server,
    free_port,
    gunicorn_command,
    gunicorn_env,
    installed_env,
    json_lines,
    load_keys_module,
    output,
    read_env_file,
    run,
    sqlite_dump,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

# Rate limits are tested elsewhere (tests/test_ratelimit.py in the generated project).
NO_LIMITS = {"RATELIMIT_DEFAULT": "1000000/minute", "AUTH_FAILURE_LIMIT": "1000000/minute"}
# gunicorn's limit_request_field_size (default 8190) counts "Name: value\r\n".
FIELD_LIMIT = 8190
ALLOWED_NET = "203.0.113.0/24"  # TEST-NET-3: the fenced key's allowlist
MAX_BODY = 1_048_576  # MAX_CONTENT_LENGTH's default
# A request id the app keeps: short and plain (logs.py).
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Bytes that must never reach a log line raw (log injection): CR, ESC, C1 controls in
# UTF-8, and the Unicode line and paragraph separators.
RAW_CONTROLS = [b"\r", b"\x1b", b"\xc2\x85", "\u2028".encode(), "\u2029".encode()]


@dataclass(frozen=True)
class Attack:
    """One hostile request and the answer the SPEC gives it.

    ``key`` names the key put in the configured header (None: no such header).
    In ``target`` and header values, ``{valid}`` stands for the valid key; as a
    header name, ``{header}`` is the configured key header (``{header_lower}``,
    ``{header_odd}``, ``{header_underscore}``: the same, disguised).
    """

    name: str
    status: int
    error: str | None  # the JSON error code; None for a success
    key: str | None = "valid"
    method: str = "GET"
    target: str = "/v1/secure-data"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    https: bool = True  # the TLS proxy's X-Forwarded-Proto: https
    by_gunicorn: bool = False  # refused by gunicorn before the app sees it
    content_type: str = "application/json"
    # Text injected after a line break: logged, but no log line may start with it.
    logged_marker: str | None = None
    # Text that must not reach the log at all (only a valid IP address may name a client).
    never_logged: str | None = None


JSON = (("Content-Type", "application/json"),)
PROBLEM_JSON = "application/problem+json"


def chunked(data: bytes, size: int = 65536) -> bytes:
    """``data`` in HTTP/1.1 chunked transfer coding: no Content-Length announces its size."""
    pieces = (data[start : start + size] for start in range(0, len(data), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


ATTACKS = [
    # The key header: absent, empty, blank, huge, foreign, doubled.
    Attack("valid key", 200, None),
    Attack("missing key header", 401, "missing_api_key", key=None),
    Attack("empty key header", 401, "missing_api_key", key="empty"),
    Attack("whitespace key header", 401, "missing_api_key", key="blank"),
    # The longest value gunicorn passes on (7.98 KiB): the app refuses it as JSON.
    Attack("key header at gunicorn's limit", 401, "invalid_api_key", key="longest"),
    # One byte more, and gunicorn answers 431 itself (so it does for any 8 KiB key).
    Attack("key header over gunicorn's limit", 431, None, key="too_long", by_gunicorn=True),
    Attack("64 KiB key header", 431, None, key="huge", by_gunicorn=True),
    Attack("non-ASCII key", 401, "invalid_api_key", key="non_ascii"),
    # Two key headers reach the app joined by a comma: not a key (no ambiguity to exploit).
    Attack(
        "two key headers",
        401,
        "invalid_api_key",
        headers=(("{header}", "{valid}"),),
    ),
    # Only the configured header counts: never the URL, a cookie or Authorization.
    Attack(
        "key in the query string",
        401,
        "missing_api_key",
        key=None,
        target="/v1/secure-data?api_key={valid}&X-API-Key={valid}",
    ),
    Attack(
        "key in a cookie",
        401,
        "missing_api_key",
        key=None,
        headers=(("Cookie", "X-API-Key={valid}; api_key={valid}"),),
    ),
    Attack(
        "key as a bearer token",
        401,
        "missing_api_key",
        key=None,
        headers=(("Authorization", "Bearer {valid}"),),
    ),
    Attack(
        "key as Authorization ApiKey",
        401,
        "missing_api_key",
        key=None,
        headers=(("Authorization", "ApiKey {valid}"),),
    ),
    Attack("key pasted into the path", 404, "not_found", key=None, target="/v1/{valid}"),
    # Header names are case-insensitive (RFC 9110)...
    Attack("lowercase header name", 200, None, key=None, headers=(("{header_lower}", "{valid}"),)),
    Attack("odd-case header name", 200, None, key=None, headers=(("{header_odd}", "{valid}"),)),
    # ...but X_API_Key is not X-API-Key: gunicorn drops names with "_" (header smuggling).
    Attack(
        "underscore header name",
        401,
        "missing_api_key",
        key=None,
        headers=(("{header_underscore}", "{valid}"),),
    ),
    # Keys that are not, or no longer, good.
    Attack("wrong prefix", 401, "invalid_api_key", key="wrong_prefix"),
    Attack("right prefix, bad checksum", 401, "invalid_api_key", key="guessed"),
    Attack("revoked key", 401, "invalid_api_key", key="revoked"),
    Attack("expired key", 401, "expired_api_key", key="expired"),
    Attack("read-only key reads", 200, None, key="reader", target="/v1/items"),
    Attack(
        "read-only key writes",
        403,
        "insufficient_scope",
        key="reader",
        method="POST",
        target="/v1/items",
        headers=JSON,
        body=b'{"name": "escalated"}',
    ),
    # Transport and proxies (TRUSTED_PROXIES=1: only the last hop is believed).
    Attack("plain HTTP with a valid key", 403, "https_required", https=False),
    Attack(
        "client-forged https before the proxy's http",
        403,
        "https_required",
        https=False,
        headers=(("X-Forwarded-Proto", "https, http"),),
    ),
    Attack(
        "fenced key from its network",
        200,
        None,
        key="fenced",
        headers=(("X-Forwarded-For", "203.0.113.7"),),
    ),
    Attack(
        "fenced key, client-forged X-Forwarded-For",
        403,
        "ip_not_allowed",
        key="fenced",
        headers=(("X-Forwarded-For", "203.0.113.7, 198.51.100.9"),),
    ),
    Attack(
        "fenced key, garbage X-Forwarded-For",
        403,
        "ip_not_allowed",
        key="fenced",
        headers=(("X-Forwarded-For", "not-an-ip"),),
    ),
    # Bodies.
    Attack(
        "oversized JSON body",
        413,
        "request_entity_too_large",
        method="POST",
        target="/v1/items",
        headers=JSON,
        body=b'{"name": "' + b"a" * MAX_BODY + b'"}',
    ),
    Attack(
        "oversized JSON body, chunked",
        413,
        "request_entity_too_large",
        method="POST",
        target="/v1/items",
        headers=(*JSON, ("Transfer-Encoding", "chunked")),
        body=chunked(b'{"name": "' + b"a" * MAX_BODY + b'"}'),
    ),
    Attack(
        "Content-Length larger than the limit",
        413,
        "request_entity_too_large",
        method="POST",
        target="/v1/items",
        headers=(*JSON, ("Content-Length", str(100 * MAX_BODY))),
    ),
    Attack(
        "malformed chunk size in a body the app reads",
        400,
        "bad_request",
        method="POST",
        target="/v1/items",
        headers=(*JSON, ("Transfer-Encoding", "chunked")),
        body=b'5\r\n{"nam\r\nZZZZ\r\ne": "x"}\r\n0\r\n\r\n',
    ),
    Attack(
        "malformed JSON",
        400,
        "bad_request",
        method="POST",
        target="/v1/items",
        headers=JSON,
        body=b'{"name": ',
    ),
    Attack(
        "invalid UTF-8 in JSON",
        400,
        "bad_request",
        method="POST",
        target="/v1/items",
        headers=JSON,
        body=b'{"name": "\xff"}',
    ),
    Attack(
        "JSON that is not an object",
        422,
        "invalid_body",
        method="POST",
        target="/v1/items",
        headers=JSON,
        body=b'["name"]',
    ),
    Attack(
        "form body",
        415,
        "unsupported_media_type",
        method="POST",
        target="/v1/items",
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        body=b"name=x",
    ),
    # Methods a route does not allow, and routes that do not exist.
    Attack("DELETE on items", 405, "method_not_allowed", method="DELETE", target="/v1/items"),
    Attack(
        "PUT on secure-data",
        405,
        "method_not_allowed",
        method="PUT",
        target="/v1/secure-data",
        headers=JSON,
        body=b"{}",
    ),
    Attack(
        "POST on health",
        405,
        "method_not_allowed",
        method="POST",
        target="/health",
        key=None,
        headers=JSON,
        body=b"{}",
    ),
    Attack("TRACE", 405, "method_not_allowed", method="TRACE", target="/v1/items"),
    Attack("unknown route", 404, "not_found", target="/v1/admin"),
    # Flask's automatic OPTIONS answer: empty, with an Allow header (no body to be JSON).
    Attack(
        "OPTIONS",
        200,
        None,
        method="OPTIONS",
        target="/v1/items",
        content_type="text/html; charset=utf-8",
    ),
    # The one HTML page of the app (use_docs_page, on by default).
    Attack(
        "docs page", 200, None, key=None, target="/docs", content_type="text/html; charset=utf-8"
    ),
    Attack("path traversal", 404, "not_found", target="/v1/../../etc/passwd"),
    # Log injection through what the app logs: request id, client IP, path, User-Agent.
    Attack(
        "encoded CR LF and ANSI in the path",
        404,
        "not_found",
        target="/v1/%1b%5b31mred%0d%0aFORGED-PATH%20200",
        logged_marker="FORGED-PATH",
    ),
    Attack(
        "encoded line separator in the path",
        404,
        "not_found",
        target="/v1/%E2%80%A8FORGED-LS",
        logged_marker="FORGED-LS",
    ),
    Attack(
        "unsafe X-Request-ID", 200, None, headers=(("X-Request-ID", "id with spaces; <script>"),)
    ),
    Attack(
        "C1 control in X-Forwarded-For",
        200,
        None,
        headers=(("X-Forwarded-For", "127.0.0.1\u0085FORGED-IP"),),
        never_logged="FORGED-IP",
    ),
    Attack(
        "Unicode line separator in User-Agent",
        200,
        None,
        headers=(("User-Agent", "agent\u2028FORGED-UA"),),
    ),
    Attack(
        "CR in X-Request-ID", 400, None, headers=(("X-Request-ID", "a\rFORGED"),), by_gunicorn=True
    ),
    Attack(
        "ANSI escape in X-Request-ID",
        400,
        None,
        headers=(("X-Request-ID", "\x1b[2J\x1b[31mred"),),
        by_gunicorn=True,
    ),
    Attack(
        "ANSI escape in X-Forwarded-For",
        400,
        None,
        headers=(("X-Forwarded-For", "\x1b[31m10.0.0.1"),),
        by_gunicorn=True,
    ),
    Attack(
        "ANSI escape in User-Agent",
        400,
        None,
        headers=(("User-Agent", "\x1b]0;pwned\x07"),),
        by_gunicorn=True,
    ),
    Attack("raw ANSI escape in the path", 400, None, target="/v1/\x1b[31mred", by_gunicorn=True),
]

# Against a second server with TRUSTED_PROXIES=0: no forwarded header is believed.
SPOOFS = [
    Attack("X-Forwarded-Proto ignored", 403, "https_required", https=True),
    Attack(
        "X-Forwarded-For ignored",
        403,
        "https_required",
        key="fenced",
        headers=(("X-Forwarded-For", "203.0.113.7"),),
    ),
    Attack("health over plain HTTP", 200, None, key=None, target="/health", https=False),
    Attack(
        "encoded CR LF in the path, JSON logs",
        403,
        "https_required",
        target="/v1/%0d%0aFORGED-JSON",
        logged_marker="FORGED-JSON",
    ),
]


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def send(port: int, raw: bytes) -> Answer:
    """Write ``raw`` to the server on a fresh connection and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may answer (413, 431) and close before it has read everything.
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.headers, response.read())


@dataclass
class Armory:
    """A private copy of the installed default project, its keys and servers."""

    root: Path
    site: Path
    package: str
    command: list[str]
    header: str
    runtime_dir: Path
    keys: dict[str, str] = field(default_factory=dict)

    def env(self, **settings: str) -> dict[str, str]:
        return installed_env(self.site, self.runtime_dir, **settings)

    def flask_keys(self, *arguments: str) -> str:
        """Run ``flask keys ARGUMENTS``; return its stdout (the new key, for create)."""
        env = self.env(FLASK_APP=self.package)
        result = run([*tool("flask"), "keys", *arguments], cwd=self.root, env=env)
        assert result.returncode == 0, output(result)
        return result.stdout.strip()

    def request(self, attack: Attack) -> bytes:
        """The bytes of ``attack``'s request, placeholders filled in."""
        valid = self.keys["valid"]
        names = {
            "{header}": self.header,
            "{header_lower}": self.header.lower(),
            "{header_odd}": "".join(
                c.upper() if i % 2 else c.lower() for i, c in enumerate(self.header)
            ),
            "{header_underscore}": self.header.replace("-", "_"),
        }
        lines = [
            f"{attack.method} {attack.target.replace('{valid}', valid)} HTTP/1.1",
            "Host: localhost",
            "Connection: close",
        ]
        if attack.https:
            lines.append("X-Forwarded-Proto: https")
        if attack.key is not None:
            lines.append(f"{self.header}: {self.keys[attack.key]}".rstrip(" "))
        for name, value in attack.headers:
            lines.append(f"{names.get(name, name)}: {value.replace('{valid}', valid)}")
        framed = {"Content-Length", "Transfer-Encoding"}
        if attack.body and not any(name in framed for name, _ in attack.headers):
            lines.append(f"Content-Length: {len(attack.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8") + attack.body


@pytest.fixture
def armory(default_project: Baked, install, project_copy, tmp_path) -> Armory:
    """The installed default project, without .env, with keys made by `flask keys`."""
    site = install(default_project)
    root = project_copy(default_project, migrated=True, site=site)
    (root / ".env").unlink()
    armory = Armory(
        root=root,
        site=site,
        package=default_project.package,
        command=gunicorn_command(default_project),
        header=str(default_project.context["api_key_header"]),
        runtime_dir=tmp_path,
    )
    keys = load_keys_module(root)
    # First the key that must expire: the others are made while its second runs out.
    armory.keys["expired"] = armory.flask_keys("create", "short-lived", "--expires-in", "1s")
    armory.keys["valid"] = armory.flask_keys("create", "valid")
    armory.keys["reader"] = armory.flask_keys("create", "reader", "--scope", "items:read")
    armory.keys["fenced"] = armory.flask_keys("create", "fenced", "--allow-ip", ALLOWED_NET)
    armory.keys["revoked"] = armory.flask_keys("create", "revoked")
    armory.flask_keys("revoke", "revoked")
    for name, key in armory.keys.items():
        assert keys.is_well_formed(key), f"{name}: {key!r}"
    valid = armory.keys["valid"]
    armory.keys["guessed"] = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    armory.keys["wrong_prefix"] = "other_" + valid.partition("_")[2]
    armory.keys["non_ascii"] = f"{keys.KEY_PREFIX}_clé-ключ-鍵"
    armory.keys["empty"] = ""
    armory.keys["blank"] = " \t "
    room = FIELD_LIMIT - len(f"{armory.header}: \r\n")
    armory.keys["longest"] = "a" * room
    armory.keys["too_long"] = "a" * (room + 1)
    armory.keys["huge"] = "a" * 65536
    return armory


def serve(armory: Armory, start, **settings: str) -> tuple[Server, int]:
    port = free_port()
    env = armory.env(
        GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2", **NO_LIMITS, **settings
    )
    return start(armory.command, armory.root, env), port


def mismatches(armory: Armory, port: int, attacks: list[Attack]) -> Iterator[str]:
    """Send each attack; yield a line for each answer that is not the expected one."""
    for attack in attacks:
        try:
            answer = send(port, armory.request(attack))
        except (OSError, http.client.HTTPException) as error:
            yield f"{attack.name}: no answer ({error!r})"
            continue
        problems = list(check(attack, answer))
        if problems:
            got = f"{answer.status} {answer.body[:200]!r}"
            yield f"{attack.name}: {'; '.join(problems)} (got {got})"


def check(attack: Attack, answer: Answer) -> Iterator[str]:
    if answer.status != attack.status:
        yield f"status {answer.status}, expected {attack.status}"
    if attack.by_gunicorn:
        # gunicorn's own refusal: the app never saw it, so no request id was given.
        if "X-Request-ID" in answer.headers:
            yield "the app answered; expected gunicorn to refuse the request"
        return
    content_type = answer.headers.get("Content-Type", "")
    # Every error is an RFC 9457 problem document; successes are plain JSON or a page.
    expected = PROBLEM_JSON if attack.error is not None else attack.content_type
    if content_type != expected:
        yield f"Content-Type {content_type!r}, expected {expected}"
    body = answer.json()
    if attack.error is not None:
        if not isinstance(body, dict) or body.get("error") != attack.error:
            yield f"error {body!r}, expected {attack.error!r}"
        elif not isinstance(body.get("message"), str) or body.get("status") != answer.status:
            yield "not a problem document with a message and the status"
    if answer.status == 401 and "WWW-Authenticate" not in answer.headers:
        yield "401 without WWW-Authenticate"
    request_id = answer.headers.get("X-Request-ID", "")
    if not SAFE_REQUEST_ID.fullmatch(request_id):
        yield f"unsafe X-Request-ID echoed: {request_id!r}"
    for name in ("Strict-Transport-Security", "X-Content-Type-Options", "Cache-Control"):
        if name not in answer.headers:
            yield f"no {name}"


def assert_clean_log(server: Server, armory: Armory, attacks: list[Attack]) -> None:
    """No key that was sent, no raw control character, no forged line in the output."""
    raw = server.log.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    sent = {name: key for name, key in armory.keys.items() if name in KEY_LIKE}
    leaked = [name for name, key in sent.items() if key in text]
    assert not leaked, f"keys in the server output: {leaked}\n{text}"
    controls = [control for control in RAW_CONTROLS if control in raw]
    assert not controls, f"raw control characters in the server output: {controls}\n{text}"
    for attack in attacks:
        if attack.logged_marker:
            forged = [line for line in text.splitlines() if line.startswith(attack.logged_marker)]
            assert not forged, f"{attack.name}: a forged log line\n{text}"
            assert attack.logged_marker in text, f"{attack.name}: the request was not logged"
        if attack.never_logged:
            assert attack.never_logged not in text, f"{attack.name}: logged\n{text}"


# The keys (real or guessed) whose text must never be logged.
KEY_LIKE = {"valid", "reader", "fenced", "revoked", "expired", "guessed", "wrong_prefix"}


def test_attack_battery(armory: Armory, start):
    """Every row of ATTACKS and SPOOFS gets the SPEC's answer; the servers survive, their
    output holds no key and no raw control character."""
    # The battery: behind one trusted proxy hop, text logs (where an escape matters most).
    proxied, proxied_port = serve(armory, start, TRUSTED_PROXIES="1", LOG_FORMAT="text")
    # The spoofing rows: no proxy trusted, JSON logs (production's default).
    direct, direct_port = serve(armory, start, TRUSTED_PROXIES="0")
    for server, port in ((proxied, proxied_port), (direct, direct_port)):
        wait_until_healthy(server, f"http://127.0.0.1:{port}")

    # The short-lived key must be past its expiry (the list shows whole seconds).
    (expiry,) = [
        entry["expires"]
        for entry in json.loads(armory.flask_keys("list", "--json"))
        if entry["name"] == "short-lived"
    ]
    time.sleep(max(0.0, (datetime.fromisoformat(expiry) - datetime.now(UTC)).total_seconds() + 1))

    failures = [
        *mismatches(armory, proxied_port, ATTACKS),
        *(f"[TRUSTED_PROXIES=0] {line}" for line in mismatches(armory, direct_port, SPOOFS)),
    ]
    assert not failures, "\n".join(failures)

    for server, port in ((proxied, proxied_port), (direct, direct_port)):
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200, health.text
        assert server.process.poll() is None, server.output()
        assert server.stop() == 0, server.output()

    assert_clean_log(proxied, armory, ATTACKS)
    assert_clean_log(direct, armory, SPOOFS)
    # Nor is any key that was sent in the database: it holds hashes, never a key.
    stored = sqlite_dump(armory.root / DATABASE)
    assert load_keys_module(armory.root).hashed_entry(armory.keys["valid"]) in stored
    leaked = [name for name in KEY_LIKE if armory.keys[name] in stored]
    assert not leaked, f"keys in the database: {leaked}"
    # Nothing forwarded was believed without a trusted proxy: every line shows the socket's IP.
    addresses = {
        record["client_ip"] for record in json_lines(direct.output()) if "client_ip" in record
    }
    assert addresses == {"127.0.0.1"}, addresses


def test_requests_gunicorn_rejects_log_no_key(
    default_project: Baked, project_copy, start, tmp_path
):
    """A key in a line gunicorn cannot parse must not reach its error log (credential leak)."""
    port = free_port()
    env = gunicorn_env(default_project, port, tmp_path, TRUSTED_PROXIES="1", **NO_LIMITS)
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    wait_until_healthy(server, f"http://127.0.0.1:{port}")
    header = default_project.context["api_key_header"]
    for raw in (
        # A header line without its colon.
        f"GET /v1/secure-data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header} {key}\r\n\r\n",
        # A request line with a control character, and the key in its query string.
        f"GET /v1/secure-data?api_key={key}\x01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        assert send(port, raw.encode()).status == 400
    assert server.stop() == 0
    assert key not in server.output()


# Slow clients, gunicorn's own error pages, response desync: gunicorn.conf.py runs the
# project's worker (workers.py) for these.

# A request line and headers with no blank line after them: the head never ends.
HALF_SENT = b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
# Half a TLS record header: the handshake never ends.
HALF_HANDSHAKE = b"\x16\x03\x01\x02"
# workers.py's REQUEST_HEAD_TIMEOUT (10 s), with room; gunicorn's worker timeout is 30 s.
STALLED_CLOSED_WITHIN = 20.0
ANSWER_WITHIN = 2.0


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server writes on ``sock`` until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl as the README does."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    result = run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
    )
    assert result.returncode == 0, output(result)
    return cert, key


@pytest.mark.parametrize("transport", ["http", "tls"])
def test_slowloris_idle_connections_do_not_block_health(
    armory: Armory, start, tmp_path, monkeypatch, transport
):
    """Six clients that send half a request (over TLS: half a handshake) and wait hold
    nobody up: /health and a keyed request answer at once, and gunicorn drops the stalled
    connections after its head timeout, quietly."""
    settings = {"TRUSTED_PROXIES": "1"}
    context = None
    if transport == "tls":  # gunicorn terminating TLS itself, as the README allows
        cert, key = self_signed_certificate(tmp_path)
        settings["GUNICORN_CMD_ARGS"] = f"--certfile {cert} --keyfile {key}"
        context = ssl.create_default_context(cafile=str(cert))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    server, port = serve(armory, start, **settings)
    wait_until_healthy(server, f"{'https' if context else 'http'}://127.0.0.1:{port}")

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN)
        return context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock

    opened = time.monotonic()
    stalled = []
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", port), timeout=STALLED_CLOSED_WITHIN)
        sock.sendall(HALF_HANDSHAKE if context else HALF_SENT)
        stalled.append(sock)
    time.sleep(0.5)  # the server has read them and waits for the rest

    valid = armory.keys["valid"]
    for target, headers in (("/health", ""), ("/v1/secure-data", f"{armory.header}: {valid}\r\n")):
        request = (
            f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"X-Forwarded-Proto: https\r\n{headers}\r\n"
        )
        started = time.monotonic()
        try:
            with connect() as sock:
                sock.sendall(request.encode())
                answer = read_until_closed(sock)
        except TimeoutError:
            pytest.fail(f"{target}: no answer within {ANSWER_WITHIN}s\n{server.output()}")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert time.monotonic() - started < ANSWER_WITHIN

    for sock in stalled:
        with sock:
            try:
                assert read_until_closed(sock) == b""
            except TimeoutError:
                pytest.fail(f"a stalled connection still open after {STALLED_CLOSED_WITHIN}s")
    assert time.monotonic() - opened < STALLED_CLOSED_WITHIN
    assert server.process.poll() is None, server.output()
    assert server.stop() == 0
    # A timed-out client is no error of the server's: no traceback, no worker killed.
    logged = server.output()
    assert "Traceback" not in logged and "CRITICAL" not in logged, logged


# A key of the project in malformed request lines and headers that gunicorn refuses
# itself, and the status it answers: {key} is a valid key, {header} the key header.
MALFORMED = [
    ("control character in the target", "GET /v1/{key}\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("NUL in the query", "GET /v1/items?k={key}\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("space in the target", "GET /v1/{key} x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("key as the method", "{key} / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("key as the HTTP version", "GET / HTTP/{key}\r\nHost: x\r\n\r\n", 400),
    ("bare LF after the request line", "GET /{key} HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("header line without a colon", "GET / HTTP/1.1\r\nHost: x\r\n{header} {key}\r\n\r\n", 400),
    ("control character in the key header", "GET / HTTP/1.1\r\n{header}: {key}\x01\r\n\r\n", 400),
    ("key in a header name", "GET / HTTP/1.1\r\nHost: x\r\n{key}(: 1\r\n\r\n", 400),
    ("key folded onto a header", "GET / HTTP/1.1\r\nHost: x\r\n{header}: a\r\n {key}\r\n\r\n", 400),
    ("key as Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {key}\r\n\r\n", 400),
    (
        "key as a transfer coding",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {key}\r\n\r\n",
        501,
    ),
    ("key as an expectation", "POST / HTTP/1.1\r\nHost: x\r\nExpect: {key}\r\n\r\n", 417),
]


def test_gunicorn_error_pages_quote_no_key(armory: Armory, start):
    """gunicorn's own answers to malformed request lines and headers, and their log lines,
    never repeat what was sent, so never a key (credential leak)."""
    server, port = serve(armory, start, TRUSTED_PROXIES="1")
    wait_until_healthy(server, f"http://127.0.0.1:{port}")
    key = armory.keys["valid"]
    secret = key.partition("_")[2]  # the key's text after its prefix
    failures = []
    for name, template, status in MALFORMED:
        raw = template.replace("{key}", key).replace("{header}", armory.header)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw.encode())
            answer = read_until_closed(sock)
        if not answer.startswith(f"HTTP/1.1 {status} ".encode()):
            failures.append(f"{name}: expected {status}, got {answer[:100]!r}")
        if secret.encode() in answer:
            failures.append(f"{name}: the key is in the answer: {answer!r}")
        if b"X-Request-ID" in answer:
            failures.append(f"{name}: the app answered, not gunicorn")
    assert not failures, "\n".join(failures)
    assert server.stop() == 0
    logged = server.output()
    assert secret not in logged, logged
    # Each refusal is still logged, by what was wrong.
    assert logged.count("Invalid request from ip=127.0.0.1") == len(MALFORMED), logged


def test_response_desync_no_second_answer_after_a_malformed_unread_body(armory: Armory, start):
    """A request answered before its body was read gets that one answer, then the
    connection closes, even when the rest of the body proves malformed: a second, error
    answer would pass for the answer to the client's next request (response desync)."""
    server, port = serve(armory, start, TRUSTED_PROXIES="1")
    wait_until_healthy(server, f"http://127.0.0.1:{port}")
    request = (
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\nnot-a-chunk-size\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        written = read_until_closed(sock)
    head, _, after = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), written
    (length,) = re.findall(rb"(?im)^content-length: *(\d+)", head)
    body, rest = after[: int(length)], after[int(length) :]
    assert json.loads(body) == {"status": "ok"}
    assert rest == b"", f"a second answer: {rest!r}"
    assert server.stop() == 0


# Where forwarded headers are believed, nobody may reach the app's port but the proxy.
PUBLISH = re.compile(r"(?:-p|--publish)[ =]\"?([^\s\"]+)|(?:^|\s)(-P|--publish-all)\b")
TRUSTS_PROXIES = re.compile(r"TRUSTED_PROXIES\s*[=:]\s*\"?[1-9]")


def reachable_from_outside(spec: str) -> bool:
    """Whether a docker or compose port mapping ([ip:]host:container[/proto]) listens on
    all of the host's interfaces or on a public address."""
    spec = spec.strip("'\"").partition("/")[0]
    if spec.startswith("["):
        host = spec[1 : spec.index("]")]
    else:
        parts = spec.split(":")
        host = parts[0] if len(parts) == 3 else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # no address (every interface), or a name that could be anything
    return address.is_unspecified or not (address.is_loopback or address.is_private)


def shell_commands(markdown: str) -> Iterator[str]:
    """The commands of a Markdown file's code blocks, continuation lines joined."""
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        yield from block.replace("\\\n", " ").splitlines()


def compose_services(compose: str) -> dict[str, str]:
    """compose.yaml's services, each as the text of its block."""
    services = compose.partition("\nservices:\n")[2]
    blocks = re.split(r"^  (?=[A-Za-z0-9_-]+:\s*$)", services, flags=re.MULTILINE)
    return {block.partition(":")[0]: block for block in blocks if block.strip()}


def compose_ports(service: str) -> list[str]:
    """The short-syntax port mappings of a compose service's block."""
    ports = re.search(r"^    ports:\n((?:      - .*\n)+)", service, flags=re.MULTILINE)
    return re.findall(r"- \"?([^\"\s]+)", ports.group(1)) if ports else []


def test_forwarded_headers_trusted_only_on_ports_the_public_cannot_reach(default_project: Baked):
    """The README's `docker run` and compose.yaml never publish a port on every interface
    (or a public one) while TRUSTED_PROXIES is set: a client reaching that port directly
    could claim HTTPS and any IP address (spoofing past allowlists and the HTTPS rule)."""
    # The check itself: what it must refuse and what it must let through.
    for spec in (
        "8000:8000",
        "8000",
        "0.0.0.0:8000:8000",
        "[::]:8000:8000",
        "-P",
        "1.2.3.4:8000:8000",
        "8000:8000/tcp",
    ):
        assert reachable_from_outside(spec), spec
    for spec in (
        "127.0.0.1:8000:8000",
        "[::1]:8000:8000",
        "10.0.0.5:8000:8000",
        '"127.0.0.1:8000:8000"',
        "127.0.0.1::8000/tcp",
    ):
        assert not reachable_from_outside(spec), spec

    readme = (default_project.root / "README.md").read_text(encoding="utf-8")
    runs = [line for line in shell_commands(readme) if "docker run" in line]
    trusting = [line for line in runs if TRUSTS_PROXIES.search(line)]
    assert trusting, f"no `docker run` with TRUSTED_PROXIES in the README: {runs}"
    for line in trusting:
        published = [p or flag for p, flag in PUBLISH.findall(line)]
        assert published, line
        assert not [spec for spec in published if reachable_from_outside(spec)], line

    compose = (default_project.root / "compose.yaml").read_text(encoding="utf-8")
    services = compose_services(compose)
    assert compose_ports(services["app"]), compose
    for name, block in services.items():
        # The app serves plain HTTP there (REQUIRE_HTTPS=false): loopback only, in any case.
        if name == "app" or TRUSTS_PROXIES.search(block):
            assert not [spec for spec in compose_ports(block) if reachable_from_outside(spec)], (
                block
            )
