"""require_api_key: who gets in, who does not, and why (auth.py)."""

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from flask import Blueprint, g
from problems import problem
from sqlalchemy import func, select

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.auth import require_api_key
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import Item

OTHER_PREFIX = "zz" if keys.KEY_PREFIX != "zz" else "yy"
# The WSGI environ name of the key header, for values a test client will not send.
HEADER_ENVIRON = "HTTP_" + API_KEY_HEADER.upper().replace("-", "_")


def refused(response, status, code):
    """True when the response is exactly the problem ``code`` with ``status``."""
    problem(response, response.status_code, code)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("ApiKey ")
        assert API_KEY_HEADER in response.headers["WWW-Authenticate"]
    return response.status_code == status


def test_valid_key_reaches_the_view(client, key):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: key})
    assert response.status_code == 200
    assert response.json["data"]["key"] == "api-keys-1"


@pytest.mark.parametrize("value", [None, "", "   ", "\t"])
def test_missing_key_is_refused(client, value):
    headers = {} if value is None else {API_KEY_HEADER: value}
    response = client.get("/v1/secure-data", headers=headers)
    assert refused(response, 401, "missing_api_key")
    assert API_KEY_HEADER in response.json["message"]


@pytest.mark.parametrize(
    "presented",
    [
        "changeme",
        keys.KEY_PREFIX + "_",
        keys.generate_key(),  # well formed, but not configured
        keys.generate_key(prefix=OTHER_PREFIX),
    ],
    ids=["malformed", "prefix-only", "unknown", "other-prefix"],
)
def test_brute_force_guess_is_refused(client, presented):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: presented})
    assert refused(response, 401, "invalid_api_key")
    assert presented not in response.get_data(as_text=True)


def test_key_with_surrounding_whitespace_is_accepted(client, key):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: f" \t{key} \t"})
    assert response.status_code == 200


@pytest.mark.parametrize("padding", ["\u00a0", "\u2003", "\u3000", "\x0b", "\x0c"])
def test_credential_confusion_key_padded_beyond_http_whitespace_is_refused(
    client, key, logs, padding
):
    """HTTP trims only spaces and tabs around a header value; a key padded with anything
    else (a non-breaking space pasted from a document) is not the key."""
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: f"{padding}{key}{padding}"})
    assert refused(response, 401, "invalid_api_key")
    assert key not in response.get_data(as_text=True)
    assert key not in logs.text


def test_key_in_query_string_is_ignored(client, key):
    for name in ("api_key", "apikey", "key", API_KEY_HEADER):
        response = client.get("/v1/secure-data", query_string={name: key})
        assert refused(response, 401, "missing_api_key"), name


def test_key_in_json_body_is_ignored(client, key):
    response = client.post("/v1/items", json={"api_key": key, API_KEY_HEADER: key, "name": "x"})
    assert refused(response, 401, "missing_api_key")


def test_key_in_form_body_is_ignored(client, key):
    response = client.post("/v1/items", data={"api_key": key, API_KEY_HEADER: key})
    assert refused(response, 401, "missing_api_key")


def test_csrf_key_in_cookie_is_ignored(client, key):
    client.set_cookie("api_key", key)
    client.set_cookie(API_KEY_HEADER, key)
    response = client.get("/v1/secure-data")
    assert refused(response, 401, "missing_api_key")


@pytest.mark.parametrize("scheme", ["Bearer", "ApiKey", "Token"])
def test_key_in_authorization_header_is_ignored(client, key, scheme):
    response = client.get("/v1/secure-data", headers={"Authorization": f"{scheme} {key}"})
    assert refused(response, 401, "missing_api_key")


def test_resource_exhaustion_huge_header_value_is_refused(client, key):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: key + "A" * 10240})
    assert refused(response, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "value",
    [
        "clé-ünïcødé",
        # What a server hands over for UTF-8 bytes: each byte as one Latin-1 character.
        "ключ\u2028".encode().decode("latin-1"),
        "\x00\x1b[31m",
    ],
)
def test_non_ascii_or_control_key_is_refused_not_crashed(client, value):
    response = client.get("/v1/secure-data", environ_overrides={HEADER_ENVIRON: value})
    assert refused(response, 401, "invalid_api_key")


def test_header_smuggling_two_keys_in_one_header_are_refused(client, key):
    other = keys.generate_key()
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: f"{key},{other}"})
    assert refused(response, 401, "invalid_api_key")
    response = client.get("/v1/secure-data", headers=[(API_KEY_HEADER, key), (API_KEY_HEADER, key)])
    assert refused(response, 401, "invalid_api_key")


def test_stale_credential_expired_key_is_refused(app, client, issue_key):
    expired = issue_key(app, expires=datetime.now(UTC) - timedelta(seconds=1))
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: expired})
    assert refused(response, 401, "expired_api_key")


def test_key_with_a_future_expiry_is_accepted(app, client, issue_key):
    expires = datetime.now(UTC) + timedelta(days=30)
    valid = issue_key(app, name="soon", expires=expires)
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: valid})
    assert response.status_code == 200
    assert response.json["expires"] == expires.isoformat()
    assert datetime.fromisoformat(response.json["expires"]) == expires


@pytest.mark.parametrize(
    ("remote_addr", "allowed"),
    [
        ("192.0.2.10", True),
        ("198.51.100.1", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        # A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 addresses.
        ("::ffff:192.0.2.10", True),
        ("::ffff:198.51.100.1", False),
        ("not-an-address", False),
    ],
)
def test_stolen_key_from_outside_the_global_allowlist_is_refused(
    make_app, key, remote_addr, allowed
):
    client = make_app(API_ALLOWED_IPS="192.0.2.0/24, 2001:db8::/32").test_client()
    response = client.get(
        "/v1/secure-data", headers={API_KEY_HEADER: key}, environ_base={"REMOTE_ADDR": remote_addr}
    )
    if allowed:
        assert response.status_code == 200
    else:
        assert refused(response, 403, "ip_not_allowed")


def test_stolen_key_from_outside_its_own_allowlist_is_refused(app, client, issue_key):
    pinned = issue_key(app, allowed_ips=(ipaddress.ip_network("192.0.2.0/24"),))
    inside = client.get(
        "/v1/secure-data",
        headers={API_KEY_HEADER: pinned},
        environ_base={"REMOTE_ADDR": "192.0.2.200"},
    )
    outside = client.get(
        "/v1/secure-data",
        headers={API_KEY_HEADER: pinned},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert inside.status_code == 200
    assert refused(outside, 403, "ip_not_allowed")


def test_privilege_escalation_key_without_the_scope_is_refused(app, client, issue_key):
    reader = issue_key(app, name="reader", scopes=frozenset({"items:read"}))
    headers = {API_KEY_HEADER: reader}
    assert client.get("/v1/items", headers=headers).status_code == 200
    assert client.get("/v1/secure-data", headers=headers).status_code == 200
    response = client.post("/v1/items", json={"name": "x"}, headers=headers)
    assert refused(response, 403, "insufficient_scope")
    assert "items:write" in response.json["message"]
    with app.app_context():
        assert db.session.scalar(select(func.count(Item.id))) == 0


def test_key_with_no_scope_still_passes_a_bare_decorator(app, client, issue_key):
    nothing = issue_key(app, scopes=frozenset())
    headers = {API_KEY_HEADER: nothing}
    assert client.get("/v1/secure-data", headers=headers).status_code == 200
    assert refused(client.get("/v1/items", headers=headers), 403, "insufficient_scope")


def test_wildcard_scope_grants_every_scope(app, client, key):
    blueprint = Blueprint("anything", __name__)

    @blueprint.get("/anything")
    @require_api_key("made:up", "another:one")
    def anything():
        return {"ok": True}

    app.register_blueprint(blueprint)
    assert client.get("/anything", headers={API_KEY_HEADER: key}).json == {"ok": True}


def test_every_listed_scope_is_required(app, client, issue_key):
    blueprint = Blueprint("both", __name__)

    @blueprint.get("/both")
    @require_api_key("reports:read", "reports:export")
    def both():
        return {"ok": True}

    app.register_blueprint(blueprint)
    half = issue_key(app, scopes=frozenset({"reports:read"}))
    full = issue_key(app, scopes=frozenset({"reports:read", "reports:export"}))
    response = client.get("/both", headers={API_KEY_HEADER: half})
    assert refused(response, 403, "insufficient_scope")
    assert "reports:export" in response.json["message"]
    assert client.get("/both", headers={API_KEY_HEADER: full}).status_code == 200


def test_decorator_keeps_the_view_name_and_docstring():
    def report():
        """Monthly report."""

    for decorated in (require_api_key(report), require_api_key("reports:read")(report)):
        assert decorated.__name__ == "report"
        assert decorated.__doc__ == "Monthly report."
        assert decorated.__wrapped__ is report
    assert require_api_key(report).required_scopes == frozenset()
    assert require_api_key("a", "b")(report).required_scopes == frozenset({"a", "b"})


def test_decorated_views_coexist_on_a_blueprint(app, client, key, issue_key):
    reports = Blueprint("reports", __name__, url_prefix="/reports")
    seen = []

    @reports.get("/daily")
    @require_api_key
    def daily():
        """Any key."""
        seen.append(g.api_key)
        return {"report": "daily", "key": g.api_key.name}

    @reports.get("/monthly")
    @require_api_key("reports:read")
    def monthly():
        """Needs reports:read."""
        return {"report": "monthly", "key": g.api_key.name}

    app.register_blueprint(reports)
    assert app.view_functions["reports.daily"].__doc__ == "Any key."
    assert app.view_functions["reports.monthly"].__doc__ == "Needs reports:read."

    analyst = issue_key(app, name="analyst", scopes=frozenset({"reports:read"}))
    daily_response = client.get("/reports/daily", headers={API_KEY_HEADER: analyst})
    monthly_response = client.get("/reports/monthly", headers={API_KEY_HEADER: analyst})
    assert daily_response.json == {"report": "daily", "key": "analyst"}
    assert monthly_response.json == {"report": "monthly", "key": "analyst"}
    assert refused(client.get("/reports/monthly"), 401, "missing_api_key")

    # g.api_key is the record: name, scopes, expiry, fingerprint; never the secret.
    record = seen[0]
    assert isinstance(record, keys.KeyRecord)
    assert record.fingerprint == keys.fingerprint(analyst)
    assert analyst not in repr(record)
    assert not any(analyst == value for value in vars(record).values())


def test_whoami_describes_the_key_without_the_secret(client, key):
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: key})
    assert response.status_code == 200
    assert response.json == {
        "name": "api-keys-1",
        "owner": "api-keys-1",
        "scopes": ["*"],
        "expires": None,
        "fingerprint": keys.fingerprint(key),
    }
    assert key not in response.get_data(as_text=True)


def test_whoami_names_the_owner_of_a_registry_key(make_app, registry_key):
    """Keys made with ``flask keys create NAME --owner OWNER`` answer for their owner; a
    key made without --owner is its own."""
    ci, _ = registry_key("acme-ci", owner="acme", scopes=["items:read"])
    solo, _ = registry_key("solo")
    client = make_app().test_client()
    answer = client.get("/v1/whoami", headers={API_KEY_HEADER: ci}).json
    assert (answer["name"], answer["owner"]) == ("acme-ci", "acme")
    assert (answer["scopes"], answer["fingerprint"]) == (["items:read"], keys.fingerprint(ci))
    answer = client.get("/v1/whoami", headers={API_KEY_HEADER: solo}).json
    assert (answer["name"], answer["owner"]) == ("solo", "solo")
