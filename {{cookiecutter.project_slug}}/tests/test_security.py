"""Transport rules (security.py): HTTPS only, security headers, trusted proxies."""

import re

import pytest
from sqlalchemy import func, select

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import Item

HTTPS = "https://localhost"
ONE_YEAR = 365 * 24 * 60 * 60


@pytest.fixture
def production(make_app):
    """A production app: HTTPS required, HSTS, JSON logs."""
    return make_app(APP_ENV="production")


@pytest.mark.parametrize("path", ["/v1/secure-data", "/v1/whoami", "/openapi.json", "/nowhere"])
def test_credential_over_plaintext_same_refusal_whatever_key(production, key, path):
    client = production.test_client()
    answers = [
        client.get(path, headers=headers)
        for headers in (
            {API_KEY_HEADER: key},
            {API_KEY_HEADER: keys.generate_key()},
            {API_KEY_HEADER: "changeme"},
            {},
        )
    ]
    # Checked before the key: the answer says nothing about the key that was sent.
    for response in answers:
        assert response.status_code == 403
        assert response.json == answers[0].json
        assert response.json["error"] == "https_required"
        assert "Location" not in response.headers
        assert key not in response.get_data(as_text=True)


def test_credential_over_plaintext_valid_key_is_reported_for_rotation(production, key, logs):
    production.test_client().get("/v1/whoami", headers={API_KEY_HEADER: key})
    errors = [line["message"] for line in logs.json() if line["level"] == "ERROR"]
    assert len(errors) == 1
    assert "rotate" in errors[0]
    assert "api-keys-1" in errors[0]
    assert keys.fingerprint(key) in errors[0]
    assert key not in logs.text


def test_credential_over_plaintext_invalid_key_is_not_an_exposure(production, logs):
    production.test_client().get("/v1/whoami", headers={API_KEY_HEADER: keys.generate_key()})
    assert [line["level"] for line in logs.json()] == ["INFO"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_credential_over_plaintext_unsafe_methods_are_refused(production, key, method):
    response = production.test_client().open(
        "/v1/items", method=method, json={"name": "x"}, headers={API_KEY_HEADER: key}
    )
    assert response.status_code == 403
    assert response.json["error"] == "https_required"
    with production.app_context():
        assert db.session.scalar(select(func.count(Item.id))) == 0


@pytest.mark.parametrize(
    ("path", "answer"), [("/health", {"status": "ok"}), ("/ready", {"status": "ready"})]
)
def test_probes_are_exempt_from_https(production, path, answer):
    """Load balancers probe over plain HTTP; the probes carry no secret and take no key."""
    client = production.test_client()
    assert client.get(path).json == answer
    assert client.head(path).status_code == 200
    assert client.post(path).json["error"] == "https_required"


def test_https_requests_are_served(production, key):
    client = production.test_client()
    headers = {API_KEY_HEADER: key}
    assert client.get("/v1/whoami", headers=headers, base_url=HTTPS).status_code == 200
    assert client.get("/v1/whoami", base_url=HTTPS).json["error"] == "missing_api_key"
    assert client.get("/openapi.json", base_url=HTTPS).status_code == 200


def test_require_https_can_be_set_outside_production(make_app, key):
    client = make_app(REQUIRE_HTTPS="true").test_client()
    headers = {API_KEY_HEADER: key}
    assert client.get("/v1/whoami", headers=headers).status_code == 403
    assert client.get("/v1/whoami", headers=headers, base_url=HTTPS).status_code == 200


def test_require_https_can_be_turned_off_in_production(make_app, key):
    client = make_app(APP_ENV="production", REQUIRE_HTTPS="false").test_client()
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: key}).status_code == 200


@pytest.mark.parametrize(
    ("path", "base_url", "send_key", "status"),
    [
        ("/v1/whoami", HTTPS, True, 200),
        ("/v1/whoami", HTTPS, False, 401),
        ("/nowhere", HTTPS, True, 404),
        ("/v1/whoami", "http://localhost", True, 403),
        ("/health", "http://localhost", False, 200),
        ("/ready", "http://localhost", False, 200),
    ],
)
def test_ssl_stripping_and_clickjacking_headers_on_every_production_response(
    production, key, path, base_url, send_key, status
):
    headers = {API_KEY_HEADER: key} if send_key else {}
    response = production.test_client().get(path, headers=headers, base_url=base_url)
    assert response.status_code == status
    hsts = response.headers["Strict-Transport-Security"]
    assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= ONE_YEAR
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_no_hsts_in_development(make_app, key):
    client = make_app(APP_ENV="development").test_client()
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: key})
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_scheme_spoofing_forwarded_proto_is_ignored_without_trusted_proxies(production, key):
    response = production.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: key, "X-Forwarded-Proto": "https"}
    )
    assert response.status_code == 403
    assert response.json["error"] == "https_required"


def test_forwarded_proto_from_a_trusted_proxy_is_believed(make_app, key):
    app = make_app(APP_ENV="production", TRUSTED_PROXIES="1")
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: key, "X-Forwarded-Proto": "https"}
    )
    assert response.status_code == 200


def test_ip_spoofing_forwarded_for_cannot_bypass_the_allowlist(make_app, key):
    app = make_app(API_ALLOWED_IPS="192.0.2.0/24")
    response = app.test_client().get(
        "/v1/whoami",
        headers={API_KEY_HEADER: key, "X-Forwarded-For": "192.0.2.1"},
        environ_base={"REMOTE_ADDR": "203.0.113.50"},
    )
    assert response.status_code == 403
    assert response.json["error"] == "ip_not_allowed"


def test_forwarded_for_from_a_trusted_proxy_sets_the_client_ip(make_app, key, logs):
    app = make_app(API_ALLOWED_IPS="192.0.2.0/24", TRUSTED_PROXIES="1")
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    inside = client.get(
        "/v1/whoami",
        headers={API_KEY_HEADER: key, "X-Forwarded-For": "192.0.2.1"},
        environ_base=proxy,
    )
    # Only the hop the trusted proxy added counts, not what the client wrote before it.
    spoofed = client.get(
        "/v1/whoami",
        headers={API_KEY_HEADER: key, "X-Forwarded-For": "192.0.2.1, 203.0.113.50"},
        environ_base=proxy,
    )
    assert inside.status_code == 200
    assert spoofed.status_code == 403
    assert spoofed.json["error"] == "ip_not_allowed"
    assert "ip=192.0.2.1 " in logs.lines[0]


@pytest.mark.parametrize(
    "forwarded_for",
    [
        '"unbalanced',  # what Werkzeug's ProxyFix cannot parse
        "",  # fewer hops than TRUSTED_PROXIES
        "proxy.internal",  # not an address
        "10.0.0.2;X-Evil: 1",
        "10.0.0.2 10.0.0.3",
    ],
)
def test_ip_spoofing_unreadable_forwarded_for_never_makes_the_client_the_proxy(
    make_app, key, logs, forwarded_for
):
    """Behind a proxy that appends to X-Forwarded-For, an unreadable header must not give
    the client the proxy's own address, which an allowlist of the internal network holds."""
    app = make_app(API_ALLOWED_IPS="10.0.0.0/8", TRUSTED_PROXIES="1")
    response = app.test_client().get(
        "/v1/whoami",
        headers={API_KEY_HEADER: key, "X-Forwarded-For": forwarded_for},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    assert response.status_code == 403
    assert response.json["error"] == "ip_not_allowed"
    # The client is logged as unknown; nothing of the header reaches a log line.
    assert "ip=unknown " in logs.text
    assert "no client (via 10.0.0.2)" in logs.text
    assert "unbalanced" not in logs.text
    assert "Evil" not in logs.text


def test_ip_spoofing_only_the_trusted_hops_count(make_app, key):
    app = make_app(API_ALLOWED_IPS="192.0.2.0/24", TRUSTED_PROXIES="2")
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    headers = {API_KEY_HEADER: key}
    two_hops = client.get(
        "/v1/whoami",
        headers={**headers, "X-Forwarded-For": "192.0.2.9, 10.0.0.5"},
        environ_base=proxy,
    )
    one_hop = client.get(
        "/v1/whoami", headers={**headers, "X-Forwarded-For": "192.0.2.9"}, environ_base=proxy
    )
    assert two_hops.status_code == 200
    assert one_hop.status_code == 403


@pytest.mark.parametrize("scheme", ["wss", "ws", "HTTPS", "ftp", "junk value"])
def test_scheme_spoofing_only_https_from_a_trusted_proxy_is_secure(make_app, key, scheme):
    app = make_app(APP_ENV="production", TRUSTED_PROXIES="1")
    response = app.test_client().get(
        "/v1/whoami",
        headers={API_KEY_HEADER: key, "X-Forwarded-Proto": scheme, "X-Forwarded-For": "192.0.2.1"},
    )
    assert response.status_code == 403
    assert response.json["error"] == "https_required"


@pytest.mark.parametrize("path", ["/v1//whoami", "//v1/whoami", "/v1/whoami/"])
def test_open_redirect_no_redirect_is_built_from_the_host_header(client, key, path):
    response = client.get(
        path, headers={API_KEY_HEADER: key, "Host": "evil.example"}, base_url="https://evil.example"
    )
    assert response.status_code in (200, 404)
    assert "Location" not in response.headers
    assert response.is_json
    assert "evil.example" not in response.get_data(as_text=True)


def test_data_exposure_static_files_are_never_cached(client):
    for response in (client.get("/static/nowhere.js"), client.get("/health")):
        assert response.headers["Cache-Control"] == "no-store"
