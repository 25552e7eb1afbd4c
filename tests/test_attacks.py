"""Hostile requests against a real gunicorn, table-driven, over raw sockets.

The default project is installed and served as documented, in production, from a
private copy whose keys are made with the real `flask keys` CLI: a valid key, a
read-only one, one fenced to an IP range, a revoked and an expired one. Each row
of ATTACKS is one request written byte by byte (duplicate headers, control
characters, non-ASCII: things an HTTP client library refuses to send), and the
answer it must get, from the SPEC's error table. Afterwards the servers still
answer /health, and their output holds no key that was sent and no raw control
character.

Some requests never reach the app: gunicorn refuses them itself (a header with a
control character, a header line over its 8190-byte limit) with its own small
HTML page. Those rows say so (``by_gunicorn``); the check is then that the app
did not answer (no X-Request-ID) and that the server lives on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from bakery import (
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


JSON = (("Content-Type", "application/json"),)


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
        logged_marker="FORGED-IP",
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
    command: list[str]
    header: str
    runtime_dir: Path
    keys: dict[str, str] = field(default_factory=dict)

    def env(self, **settings: str) -> dict[str, str]:
        return installed_env(self.site, self.runtime_dir, **settings)

    def flask_keys(self, *arguments: str) -> str:
        """Run ``flask keys ARGUMENTS``; return its stdout (the new key, for create)."""
        result = run([*tool("flask"), "keys", *arguments], cwd=self.root, env=self.env())
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
    root = project_copy(default_project)
    (root / ".env").unlink()
    armory = Armory(
        root=root,
        site=site,
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
    if content_type != attack.content_type:
        yield f"Content-Type {content_type!r}, expected {attack.content_type}"
    body = answer.json()
    if attack.error is not None:
        if not isinstance(body, dict) or body.get("error") != attack.error:
            yield f"error {body!r}, expected {attack.error!r}"
        elif not isinstance(body.get("message"), str):
            yield "no message"
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

    # The short-lived key must be past its expiry (the registry keeps whole seconds).
    registry = (armory.root / "instance" / "api_keys.toml").read_text(encoding="utf-8")
    (expiry,) = [
        entry["expires"]
        for entry in tomllib.loads(registry)["keys"]
        if entry["name"] == "short-lived"
    ]
    time.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds() + 0.5))

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
    # Nothing forwarded was believed without a trusted proxy: every line shows the socket's IP.
    addresses = {
        record["client_ip"] for record in json_lines(direct.output()) if "client_ip" in record
    }
    assert addresses == {"127.0.0.1"}, addresses


def test_requests_gunicorn_rejects_log_no_key(default_project: Baked, start, tmp_path):
    """A key in a line gunicorn cannot parse must not reach its error log (credential leak)."""
    port = free_port()
    env = gunicorn_env(default_project, port, tmp_path, TRUSTED_PROXIES="1", **NO_LIMITS)
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    server = start(gunicorn_command(default_project), default_project.root, env)
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
