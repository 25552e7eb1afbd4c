"""GitHub's leaked-key alert on a real gunicorn: the key is refused by every worker in 2 s.

The project with ``use_secret_scanning`` is installed, migrated by the real
`flask db upgrade`, given a key by the real `flask keys create`, and served in
production by gunicorn with two workers behind one trusted proxy hop. GitHub's
key list is a real HTTP server on loopback, in a thread of this test, serving
a P-256 public key made here; the alert is signed with its private key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bakery import (
    MATRIX,
    Baked,
    booted_workers,
    free_port,
    gunicorn_command,
    installed_env,
    json_lines,
    load_keys_module,
    only_worker,
    output,
    run,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

# The product promises "within about a second"; this is the most the test waits.
RELOAD_DEADLINE = 2.0
HTTPS = {"X-Forwarded-Proto": "https", "Connection": "close"}
LEAK_URL = "https://github.com/acme/app/blob/1a2b3c/.env"


@dataclass
class KeyList:
    """GitHub's key list, played on loopback: its URL, the key it publishes, its traffic."""

    url: str
    identifier: str
    private: ec.EllipticCurvePrivateKey
    requests: list[str]

    def sign(self, body: bytes) -> dict[str, str]:
        """The headers GitHub sends with ``body``."""
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
        }


@pytest.fixture
def github() -> Iterator[KeyList]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    identifier = hashlib.sha256(pem.encode()).hexdigest()
    body = json.dumps(
        {"public_keys": [{"key_identifier": identifier, "key": pem, "is_current": True}]}
    ).encode()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/meta/public_keys/secret_scanning"
    yield KeyList(url=url, identifier=identifier, private=private, requests=seen)
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def scanning_project(bake) -> Baked:
    """The bake of the matrix that has the secret-scanning endpoint."""
    (name,) = [name for name, answers in MATRIX.items() if answers.get("use_secret_scanning")]
    return bake(**MATRIX[name])


def test_a_signed_alert_revokes_a_key_that_every_worker_then_refuses(
    scanning_project, install, project_copy, start, github, tmp_path
):
    baked = scanning_project
    site = install(baked)
    root = project_copy(baked, migrated=True, site=site)
    (root / ".env").unlink()  # the registry is the only source of keys
    header = str(baked.context["api_key_header"])
    keys = load_keys_module(root)

    def env(**settings: str) -> dict[str, str]:
        return installed_env(site, tmp_path, SECRET_SCANNING_KEYS_URL=github.url, **settings)

    created = run(
        [*tool("flask"), "keys", "create", "ci-bot", "--owner", "acme"],
        cwd=root,
        env=env(FLASK_APP=baked.package),
    )
    assert created.returncode == 0, output(created)
    key = created.stdout.strip()
    assert keys.is_well_formed(key)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {"GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2"}
    server = start(gunicorn_command(baked), root, env(TRUSTED_PROXIES="1", **settings))
    wait_until_healthy(server, base)
    workers = booted_workers(server, 2)

    def whoami() -> requests.Response:
        return requests.get(f"{base}/v1/whoami", headers={**HTTPS, header: key}, timeout=10)

    def on_every_worker() -> list[requests.Response]:
        answers = []
        for worker in range(len(workers)):
            with only_worker(workers, worker):
                answers.append(whoami())
        return answers

    assert [answer.status_code for answer in on_every_worker()] == [200, 200]

    body = json.dumps(
        [{"token": key, "type": f"{keys.KEY_PREFIX}_api_key", "url": LEAK_URL, "source": "content"}]
    ).encode()
    alert_url = f"{base}/secret-scanning/github"
    # Plain HTTP: refused before anything is read or fetched.
    plain = requests.post(alert_url, data=body, headers=github.sign(body), timeout=10)
    assert plain.status_code == 403
    assert plain.json()["error"] == "https_required"
    assert github.requests == []

    answer = requests.post(alert_url, data=body, headers={**HTTPS, **github.sign(body)}, timeout=10)
    revoked_at = time.monotonic()
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {
            "token_hash": keys.hash_key(key),
            "token_type": f"{keys.KEY_PREFIX}_api_key",
            "label": "true_positive",
        }
    ]
    assert key not in answer.text
    assert len(github.requests) == 1

    while True:
        answers = on_every_worker()
        if all(answer.status_code == 401 for answer in answers):
            break
        assert time.monotonic() - revoked_at < RELOAD_DEADLINE, [a.status_code for a in answers]
        time.sleep(0.05)
    assert {answer.json()["error"] for answer in answers} == {"invalid_api_key"}

    server.stop()
    logged = server.output()
    assert key not in logged, "the leaked key reached the server output"
    (line,) = [
        record
        for record in json_lines(logged)
        if record.get("level") == "ERROR" and "leaked" in record.get("message", "")
    ]
    for part in ("ci-bot", "acme", keys.fingerprint(key), LEAK_URL):
        assert part in line["message"], line
