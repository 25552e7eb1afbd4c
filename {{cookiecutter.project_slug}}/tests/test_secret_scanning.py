"""POST /secret-scanning/github: GitHub's alert revokes a leaked key (secret_scanning.py).

GitHub's key list is played by a real HTTP server on loopback, in a thread,
serving P-256 public keys made here with ``cryptography``; the alerts are
signed with their private keys, as GitHub signs them.
"""

import base64
import hashlib
import io
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from {{ cookiecutter.package_name }} import keys, registry
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER, ConfigError, load_config
from {{ cookiecutter.package_name }}.secret_scanning import (
    KEY_IDENTIFIER_HEADER,
    MAX_ALERT_BYTES,
    MAX_TOKENS,
    SIGNATURE_HEADER,
)

ALERT_PATH = "/secret-scanning/github"
TOKEN_TYPE = "{{ cookiecutter.key_prefix }}_api_key"


class SigningKey:
    """A P-256 key pair standing for one of GitHub's, named as GitHub names its keys."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        public = self.private.public_key()
        self.pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.identifier = hashlib.sha256(self.pem.encode()).hexdigest()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


class KeyListServer:
    """GitHub's key list on loopback: ``{"public_keys": [...]}`` of ``published``, or
    ``answer`` (status, body) instead; counts the requests it gets."""

    def __init__(self) -> None:
        self.published: list[SigningKey] = []
        self.answer: tuple[int, bytes] | None = None
        self.requests = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stand_in.requests += 1
                status, body = stand_in.answer or (200, stand_in.key_list())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/meta/public_keys"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def key_list(self) -> bytes:
        keys_listed = [
            {"key_identifier": key.identifier, "key": key.pem, "is_current": index == 0}
            for index, key in enumerate(self.published)
        ]
        return json.dumps({"public_keys": keys_listed}).encode()

    def stop(self) -> None:
        """Down: nothing listens on its port any more."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()


@pytest.fixture
def signing_key():
    return SigningKey()


@pytest.fixture
def github(signing_key):
    """The stand-in for GitHub's key list, publishing ``signing_key``."""
    server = KeyListServer()
    server.published.append(signing_key)
    yield server
    server.stop()


@pytest.fixture
def app(make_app, github):
    return make_app(SECRET_SCANNING_KEYS_URL=github.url)


@pytest.fixture
def leaked(app, registry_key, logs):
    """A live registry key of owner acme, known to the app: (key, entry)."""
    key, entry = registry_key("ci-bot", owner="acme")
    logs.attach()  # each create_app sets up logging anew
    app.extensions["api_keys"].refresh()
    return key, entry


def alert(*tokens: str, url: str = "https://github.com/octo/repo/blob/abc/.env") -> bytes:
    """An alert body as GitHub sends it: a JSON array, one match per token."""
    matches = [{"token": t, "type": TOKEN_TYPE, "url": url, "source": "content"} for t in tokens]
    return json.dumps(matches).encode()


def post(client, body: bytes, signer: SigningKey | None, identifier: str | None = None, **kw):
    """POST ``body`` signed by ``signer`` (None: unsigned) under its identifier or another."""
    headers = {}
    if signer is not None:
        headers[KEY_IDENTIFIER_HEADER] = identifier or signer.identifier
        headers[SIGNATURE_HEADER] = signer.sign(body)
    return client.post(
        ALERT_PATH, data=body, content_type="application/json", headers=headers, **kw
    )


def status_of(app, key: str) -> registry.KeyStatus:
    with app.app_context():
        return registry.status(registry.find_key(key), datetime.now(UTC))


def answers_401(app, client, key: str) -> bool:
    """Whether the app, once it has read the registry, refuses ``key``."""
    app.extensions["api_keys"].refresh()
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: key})
    return response.status_code == 401 and response.json["error"] == "invalid_api_key"


def test_a_signed_alert_revokes_a_live_key_and_labels_every_token(
    app, client, leaked, registry_key, signing_key, logs
):
    key, entry = leaked
    gone, _ = registry_key("old-bot", revoked=True)
    logs.attach()
    unknown = keys.generate_key()  # well-formed, never issued
    lookalike = "{{ cookiecutter.key_prefix }}_" + "A" * (keys.KEY_LENGTH - len(keys.KEY_PREFIX) - 1)
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: key}).status_code == 200

    response = post(client, alert(key, gone, unknown, lookalike), signing_key)

    assert response.status_code == 200
    assert response.json == [
        {"token_hash": keys.hash_key(token), "token_type": TOKEN_TYPE, "label": label}
        for token, label in [
            (key, "true_positive"),
            (gone, "true_positive"),  # already revoked: still a real key that leaked
            (unknown, "false_positive"),
            (lookalike, "false_positive"),
        ]
    ]
    assert status_of(app, key) == registry.KeyStatus.REVOKED
    assert answers_401(app, client, key)
    # The operator's line: ERROR, with the key's name, owner, fingerprint and where it leaked.
    (revoked,) = [line for line in logs.lines if " ERROR " in line]
    for part in ("ci-bot", "acme", entry.fingerprint, "https://github.com/octo/repo/blob/abc/.env"):
        assert part in revoked
    # And the audit line every change of the registry gets, naming who made it.
    (audited,) = [line for line in logs.lines if "keys revoke:" in line]
    assert "name=ci-bot" in audited and "by=github-secret-scanning" in audited


def test_credential_leak_no_reported_token_in_any_answer_or_log(
    app, client, leaked, signing_key, logs
):
    key, _ = leaked
    other = keys.generate_key()
    answers = [
        post(client, alert(key, other), signing_key),
        post(client, alert(key, other), signing_key),  # again: already revoked
        post(client, b'[{"token": "%s"}]' % key.encode(), signing_key),  # malformed
        post(client, alert(key), SigningKey(), signing_key.identifier),  # forged
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 422, 401]
    assert answers[0].mimetype == "application/json"
    for answer in answers:
        assert key not in answer.get_data(as_text=True)
        assert other not in answer.get_data(as_text=True)
    assert logs.lines
    assert key not in logs.text and other not in logs.text


def test_an_api_keys_key_is_a_true_positive_the_operator_must_remove(
    app, client, key, signing_key, logs
):
    """A key of API_KEYS lives in the servers' environment, which no route can change."""
    response = post(client, alert(key), signing_key)
    assert response.json[0]["label"] == "true_positive"
    (line,) = [line for line in logs.lines if " ERROR " in line]
    assert "api-keys-1" in line and "API_KEYS" in line
    assert key not in logs.text


# How each forgery signs an alert body: header values, given GitHub's real key.
FORGERIES = {
    "unsigned": lambda real, body: {},
    "no-identifier": lambda real, body: {SIGNATURE_HEADER: real.sign(body)},
    "signature-not-base64": lambda real, body: {
        KEY_IDENTIFIER_HEADER: real.identifier,
        SIGNATURE_HEADER: "not base64!",
    },
    "signature-not-DER": lambda real, body: {
        KEY_IDENTIFIER_HEADER: real.identifier,
        SIGNATURE_HEADER: base64.b64encode(b"0" * 70).decode(),
    },
    "identifier-not-a-token": lambda real, body: {
        KEY_IDENTIFIER_HEADER: "../" + real.identifier,
        SIGNATURE_HEADER: real.sign(body),
    },
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_alert_without_a_valid_signature_changes_nothing(
    app, client, leaked, signing_key, github, forgery
):
    key, _ = leaked
    body = alert(key)
    headers = FORGERIES[forgery](signing_key, body)
    response = client.post(ALERT_PATH, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"
    assert status_of(app, key) == registry.KeyStatus.ACTIVE
    assert github.requests == 0, "headers like these must not fetch GitHub's keys"


def test_forged_alert_signed_by_another_key_or_for_another_body_changes_nothing(
    app, client, leaked, signing_key
):
    key, _ = leaked
    forger = SigningKey()
    assert post(client, alert(key), forger, signing_key.identifier).status_code == 401
    # A real signature, over a harmless body, sent with another body (replay).
    signature = signing_key.sign(alert(keys.generate_key()))
    response = client.post(
        ALERT_PATH,
        data=alert(key),
        content_type="application/json",
        headers={KEY_IDENTIFIER_HEADER: signing_key.identifier, SIGNATURE_HEADER: signature},
    )
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"
    assert status_of(app, key) == registry.KeyStatus.ACTIVE


def test_an_unknown_key_identifier_is_looked_for_once_more_then_not_for_a_while(
    app, client, leaked, signing_key, github
):
    """A made-up identifier fetches the list again once, then gets 503 with Retry-After
    for a minute, so forged alerts cannot make the app hammer GitHub."""
    key, _ = leaked
    forger = SigningKey()
    assert post(client, alert(keys.generate_key()), signing_key).status_code == 200
    assert github.requests == 1
    unknown = post(client, alert(key), forger)
    assert unknown.status_code == 401
    assert unknown.json["error"] == "invalid_signature"
    assert github.requests == 2
    again = post(client, alert(key), forger)
    assert again.status_code == 503
    assert again.json["error"] == "signing_keys_unavailable"
    assert 0 < int(again.headers["Retry-After"]) <= 60
    assert github.requests == 2
    # A key already in hand still works meanwhile.
    assert post(client, alert(keys.generate_key()), signing_key).status_code == 200
    assert github.requests == 2
    assert status_of(app, key) == registry.KeyStatus.ACTIVE


def test_a_stale_key_list_is_fetched_again_for_a_rotated_key(
    app, client, leaked, signing_key, github
):
    key, _ = leaked
    assert post(client, alert(keys.generate_key()), signing_key).status_code == 200
    rotated = SigningKey()
    github.published.insert(0, rotated)  # GitHub signs with a new key from now on
    response = post(client, alert(key), rotated)
    assert response.status_code == 200
    assert response.json[0]["label"] == "true_positive"
    assert github.requests == 2
    assert status_of(app, key) == registry.KeyStatus.REVOKED


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(None, id="down"),
        pytest.param((500, b"oops"), id="server-error"),
        pytest.param((403, b'{"message": "API rate limit exceeded"}'), id="rate-limited"),
        pytest.param((200, b'{"public_keys": []}'), id="no-keys"),
        pytest.param((200, b"<html>"), id="not-a-key-list"),
    ],
)
def test_no_key_list_means_503_and_nothing_revoked(
    app, client, leaked, signing_key, github, logs, outage
):
    """GitHub retries a 5xx later; an alert is never taken unverified."""
    key, _ = leaked
    if outage is None:
        github.stop()
    else:
        github.answer = outage
    response = post(client, alert(key), signing_key)
    assert response.status_code == 503
    assert response.json["error"] == "signing_keys_unavailable"
    assert status_of(app, key) == registry.KeyStatus.ACTIVE
    assert any(" ERROR " in line and "GitHub's keys" in line for line in logs.lines)
    # Alerts meanwhile are told when to come back, and fetch nothing until then.
    fetched = github.requests
    again = post(client, alert(key), signing_key)
    assert again.status_code == 503
    assert 0 < int(again.headers["Retry-After"]) <= 60
    assert github.requests == fetched


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"not json", 400, "bad_request", id="not-json"),
        pytest.param(b'[{"token": "%(key)s", "type": "t"}', 400, "bad_request", id="truncated"),
        pytest.param(b'{"token": "%(key)s", "type": "t"}', 422, "invalid_body", id="an-object"),
        pytest.param(b'[{"token": "%(key)s"}]', 422, "invalid_body", id="no-type"),
        pytest.param(b'[{"token": 12, "type": "t"}]', 422, "invalid_body", id="token-a-number"),
        pytest.param(b'[{"token": "%(key)s", "type": "t", "url": ["x"]}]', 422, "invalid_body"),
        pytest.param(b'[{"token": "%(key)s", "type": "%(long)s"}]', 422, "invalid_body"),
    ],
)
def test_a_malformed_alert_is_refused_and_changes_nothing(
    app, client, leaked, signing_key, body, status, code
):
    key, _ = leaked
    body = body % {b"key": key.encode(), b"long": b"t" * 201}
    response = post(client, body, signing_key)
    assert response.status_code == status
    assert response.json["error"] == code
    assert key not in response.get_data(as_text=True)
    assert status_of(app, key) == registry.KeyStatus.ACTIVE


def test_a_signed_alert_of_another_content_type_is_refused(app, client, leaked, signing_key):
    key, _ = leaked
    body = alert(key)
    headers = {
        KEY_IDENTIFIER_HEADER: signing_key.identifier,
        SIGNATURE_HEADER: signing_key.sign(body),
    }
    response = client.post(ALERT_PATH, data=body, content_type="text/plain", headers=headers)
    assert response.status_code == 415
    assert status_of(app, key) == registry.KeyStatus.ACTIVE


def test_resource_exhaustion_oversized_alert_is_refused(app, client, leaked, signing_key):
    key, _ = leaked
    body = alert(key) + b" " * MAX_ALERT_BYTES  # valid JSON, signed, too large
    response = post(client, body, signing_key)
    assert response.status_code == 413
    assert status_of(app, key) == registry.KeyStatus.ACTIVE
    # Streamed (chunked, no Content-Length): cut at the limit, and still a 413.
    streamed = client.post(
        ALERT_PATH,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={
            KEY_IDENTIFIER_HEADER: signing_key.identifier,
            SIGNATURE_HEADER: signing_key.sign(body),
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert streamed.status_code == 413
    assert status_of(app, key) == registry.KeyStatus.ACTIVE


def test_resource_exhaustion_too_many_tokens_in_one_alert(app, client, leaked, signing_key):
    key, _ = leaked
    response = post(client, alert(*[key] * (MAX_TOKENS + 1)), signing_key)
    assert response.status_code == 422
    assert response.json["error"] == "invalid_body"
    assert [error["type"] for error in response.json["errors"]] == ["too_long"]
    assert status_of(app, key) == registry.KeyStatus.ACTIVE
    assert post(client, alert(*[key] * MAX_TOKENS), signing_key).status_code == 200


def test_credential_over_plaintext_alert_over_http_is_refused_in_production(
    make_app, leaked, signing_key, github
):
    key, _ = leaked
    production = make_app(APP_ENV="production", SECRET_SCANNING_KEYS_URL=github.url)
    client = production.test_client()
    response = post(client, alert(key), signing_key)
    assert response.status_code == 403
    assert response.json["error"] == "https_required"
    assert status_of(production, key) == registry.KeyStatus.ACTIVE
    assert github.requests == 0
    over_https = post(client, alert(key), signing_key, base_url="https://localhost")
    assert over_https.status_code == 200
    assert status_of(production, key) == registry.KeyStatus.REVOKED


@pytest.mark.parametrize(
    "url",
    [
        "https://api.github.com/meta/public_keys/secret_scanning",
        "https://keys.example.com:8443/list",
        "http://127.0.0.1:8080/keys",
        "http://localhost/keys",
        "http://[::1]:9000/keys",
    ],
)
def test_the_key_list_url_may_be_https_or_loopback_http(url):
    assert load_config({"SECRET_SCANNING_KEYS_URL": url})["SECRET_SCANNING_KEYS_URL"] == url


def test_the_key_list_url_defaults_to_githubs():
    assert load_config({})["SECRET_SCANNING_KEYS_URL"] == (
        "https://api.github.com/meta/public_keys/secret_scanning"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@keys.example.com/list",  # plain HTTP off this machine
        "http://127.0.0.1.example.com/keys",
        "file:///etc/hunter2",
        "ftp://hunter2.example.com/keys",
        "https://",
        "hunter2",
        "http://[::1/hunter2",
    ],
)
def test_man_in_the_middle_key_list_over_plain_http_refuses_to_start(url):
    """Keys fetched in clear could be swapped for a forger's: one line, the URL not echoed."""
    with pytest.raises(ConfigError) as refused:
        load_config({"SECRET_SCANNING_KEYS_URL": url})
    assert "SECRET_SCANNING_KEYS_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_the_readme_gives_github_the_regex_keys_are_found_by():
    """The regular expression the README tells GitHub is the one keys.py finds keys with,
    and it matches every key this project makes, alone and inside text."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Leaked keys", 1)[1].split("\n## ", 1)[0]
    (regex,) = re.findall(r"^\| regular expression \| `([^`]+)` \|$", section, re.MULTILINE)
    assert regex == keys._KEY_ANYWHERE.pattern
    key = keys.generate_key()
    assert re.fullmatch(regex, key)
    assert re.findall(regex, f"API_KEY='{key}'\n") == [key]
    assert TOKEN_TYPE in section
    assert ALERT_PATH in section
