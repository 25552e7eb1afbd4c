"""Registry keys at work: owners, expiry, revocation, rotation, allowlists and scopes, as a
client and an operator see them through the running app, with the registry in the database.
"""

import socket
from datetime import UTC, datetime, timedelta

import pytest
from problems import problem
from sqlalchemy import update

from {{ cookiecutter.package_name }} import ConfigError, create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import ApiKey

EXPIRES_HEADER = "API-Key-Expires"


def now():
    return datetime.now(UTC).replace(microsecond=0)


def error_code(response):
    return problem(response, response.status_code, response.json["error"])["error"]


def get(app, path, api_key, **kwargs):
    return app.test_client().get(path, headers={API_KEY_HEADER: api_key, **kwargs})


# ---- a registry key at work ---------------------------------------------------------------


def test_registry_key_reaches_the_view(make_app, registry_key):
    new_key, _ = registry_key("ci")
    response = get(make_app(), "/v1/secure-data", new_key)
    assert response.status_code == 200
    assert response.json["data"]["key"] == "ci"
    assert EXPIRES_HEADER not in response.headers


def test_whoami_shows_the_registry_record(make_app, registry_key):
    expires = now() + timedelta(days=30)
    new_key, stored = registry_key(
        "partner", owner="acme", scopes=["items:write", "items:read"], expires=expires
    )
    response = get(make_app(), "/v1/whoami", new_key)
    assert response.status_code == 200
    assert response.json == {
        "name": "partner",
        "owner": "acme",
        "scopes": ["items:read", "items:write"],
        "expires": expires.isoformat(),
        "fingerprint": stored.fingerprint,
    }
    assert stored.fingerprint == keys.fingerprint(new_key)
    assert datetime.fromisoformat(response.json["expires"]) == expires


def test_api_keys_and_registry_keys_share_one_ring(make_app, registry_key, key):
    new_key, _ = registry_key("ci")
    app = make_app()
    static = get(app, "/v1/whoami", key).json
    assert (static["name"], static["owner"]) == ("api-keys-1", "api-keys-1")
    assert get(app, "/v1/whoami", new_key).json["owner"] == "ci"


def test_privilege_escalation_registry_scopes_are_enforced(make_app, registry_key):
    reader, _ = registry_key("reader", scopes=["items:read"])
    app = make_app()
    client = app.test_client()
    assert client.get("/v1/items", headers={API_KEY_HEADER: reader}).status_code == 200
    response = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"


# ---- revocation and expiry ------------------------------------------------------------------


def test_revoked_key_is_refused_as_invalid(make_app, registry_key, logs):
    revoked_key, stored = registry_key("gone", revoked=True, expires=now() + timedelta(days=3))
    response = get(make_app(), "/v1/secure-data", revoked_key)
    assert response.status_code == 401
    assert error_code(response) == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("ApiKey ")
    assert "authentication failed: revoked" in logs.text
    assert stored.fingerprint in logs.text
    assert revoked_key not in logs.text
    assert revoked_key not in response.get_data(as_text=True)


def test_stale_credential_expired_key_is_refused(make_app, registry_key, logs):
    expires = now() - timedelta(hours=1)
    old_key, _ = registry_key("old", created=now() - timedelta(days=2), expires=expires)
    response = get(make_app(), "/v1/secure-data", old_key)
    assert response.status_code == 401
    assert error_code(response) == "expired_api_key"
    assert response.headers["WWW-Authenticate"].startswith("ApiKey ")
    assert datetime.fromisoformat(response.headers[EXPIRES_HEADER]) == expires
    assert "authentication failed: expired_api_key" in logs.text
    assert old_key not in logs.text


def test_key_with_an_expiry_announces_it_on_every_response(make_app, registry_key):
    expires = now() + timedelta(days=90)
    new_key, _ = registry_key("ci", expires=expires)
    app = make_app()
    for path in ("/v1/secure-data", "/v1/whoami", "/v1/items"):
        response = get(app, path, new_key)
        assert response.status_code == 200
        assert datetime.fromisoformat(response.headers[EXPIRES_HEADER]) == expires


def test_key_without_expiry_sends_no_expiry_header(make_app, registry_key, key):
    new_key, _ = registry_key("ci")
    app = make_app()
    for api_key in (new_key, key):
        assert EXPIRES_HEADER not in get(app, "/v1/whoami", api_key).headers


def test_stale_credential_near_expiry_is_logged_once(make_app, registry_key, logs):
    soon_key, soon = registry_key("soon", expires=now() + timedelta(days=3))
    later_key, later = registry_key("later", expires=now() + timedelta(days=30))
    app = make_app()
    for _ in range(3):
        assert get(app, "/v1/secure-data", soon_key).status_code == 200
        assert get(app, "/v1/secure-data", later_key).status_code == 200
    warnings = [line for line in logs.lines if "WARNING" in line and "expires in" in line]
    assert len(warnings) == 1
    assert soon.fingerprint in warnings[0]
    assert "'soon'" in warnings[0]
    assert later.fingerprint not in logs.text
    assert soon_key not in logs.text


def test_rotated_key_works_as_its_name_until_its_grace_period_ends(make_app, keys_cli):
    old_key = keys_cli("create", "ci", "--owner", "acme").stdout.strip()
    new_key = keys_cli("rotate", "ci", "--grace", "1d").stdout.strip()
    app = make_app()
    old = get(app, "/v1/whoami", old_key)
    assert old.status_code == 200
    # Anything keyed on the name or the owner sees one client through the rotation.
    assert (old.json["name"], old.json["owner"]) == ("ci", "acme")
    assert old.json["fingerprint"] == keys.fingerprint(old_key)
    grace_end = datetime.fromisoformat(old.headers[EXPIRES_HEADER])
    assert timedelta(hours=23) < grace_end - datetime.now(UTC) <= timedelta(days=1)
    new = get(app, "/v1/whoami", new_key).json
    assert (new["name"], new["owner"]) == ("ci", "acme")
    assert new["fingerprint"] == keys.fingerprint(new_key)


def test_stale_credential_rotated_with_zero_grace_is_refused(make_app, keys_cli):
    old_key = keys_cli("create", "ci").stdout.strip()
    new_key = keys_cli("rotate", "ci", "--grace", "0s").stdout.strip()
    app = make_app()
    response = get(app, "/v1/whoami", old_key)
    assert response.status_code == 401
    assert error_code(response) == "invalid_api_key"
    assert get(app, "/v1/whoami", new_key).status_code == 200


# ---- IP allowlists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote_addr", "status"),
    [
        ("203.0.113.9", 200),
        ("::ffff:203.0.113.9", 200),  # an IPv4 client on a dual-stack socket
        ("2001:db8::5", 200),
        ("198.51.100.1", 403),
        ("2001:db9::1", 403),
        ("::1", 403),
    ],
)
def test_credential_theft_key_allowlist_v4_and_v6(make_app, registry_key, remote_addr, status):
    new_key, _ = registry_key("office", allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
    response = (
        make_app()
        .test_client()
        .get(
            "/v1/secure-data",
            headers={API_KEY_HEADER: new_key},
            environ_base={"REMOTE_ADDR": remote_addr},
        )
    )
    assert response.status_code == status
    if status == 403:
        assert error_code(response) == "ip_not_allowed"


def test_credential_theft_global_allowlist_applies_to_registry_keys(make_app, registry_key):
    new_key, _ = registry_key("office", allowed_ips=["203.0.113.0/24"])
    app = make_app(API_ALLOWED_IPS="198.51.100.0/24")
    response = app.test_client().get(
        "/v1/secure-data",
        headers={API_KEY_HEADER: new_key},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert response.status_code == 403
    assert error_code(response) == "ip_not_allowed"


@pytest.mark.parametrize(
    ("forwarded_for", "status"),
    [
        ("203.0.113.9", 200),
        ("198.51.100.1", 403),
        # A client-supplied address on the left is not what the one trusted proxy saw.
        ("203.0.113.9, 198.51.100.1", 403),
    ],
)
def test_credential_theft_allowlist_behind_a_trusted_proxy(
    make_app, registry_key, forwarded_for, status
):
    new_key, _ = registry_key("office", allowed_ips=["203.0.113.0/24"])
    app = make_app(TRUSTED_PROXIES="1")
    response = app.test_client().get(
        "/v1/secure-data",
        headers={API_KEY_HEADER: new_key, "X-Forwarded-For": forwarded_for},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    assert response.status_code == status


def test_ip_spoofing_forwarded_for_is_ignored_without_trusted_proxies(make_app, registry_key):
    new_key, _ = registry_key("office", allowed_ips=["203.0.113.0/24"])
    app = make_app(TRUSTED_PROXIES="0")
    response = app.test_client().get(
        "/v1/secure-data",
        headers={API_KEY_HEADER: new_key, "X-Forwarded-For": "203.0.113.9"},
        environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )
    assert response.status_code == 403
    assert error_code(response) == "ip_not_allowed"


# ---- a running server follows the registry ------------------------------------------------------


def test_revoked_key_is_refused_by_a_running_server_within_a_second(make_app, keys_cli, wait_for):
    old_key = keys_cli("create", "old").stdout.strip()
    app = make_app()
    client = app.test_client()

    def status(api_key):
        return client.get("/v1/whoami", headers={API_KEY_HEADER: api_key}).status_code

    assert status(old_key) == 200
    assert keys_cli("revoke", "old").exit_code == 0
    new_key = keys_cli("create", "new").stdout.strip()
    # No refresh called: the server looks at the registry by itself, at most once a second.
    wait_for(lambda: status(old_key) == 401 and status(new_key) == 200, seconds=2)
    refused = client.get("/v1/whoami", headers={API_KEY_HEADER: old_key})
    assert error_code(refused) == "invalid_api_key"
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: new_key}).json["name"] == "new"


# ---- start-up ------------------------------------------------------------------------------------


def test_production_starts_with_a_registry_key_only(registry_key):
    # conftest runs each test in its own directory: instance/app.db is this test's.
    new_key, _ = registry_key("first")
    app = create_app({"APP_ENV": "production"})
    assert app.extensions["api_keys"].usable_count(datetime.now(UTC)) == 1
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: new_key}, base_url="https://localhost"
    )
    assert response.status_code == 200
    assert response.json["name"] == "first"


def test_production_reads_the_registry_at_database_url(registry_key, tmp_path):
    new_key, _ = registry_key("first")
    (tmp_path / "instance" / "app.db").rename(tmp_path / "elsewhere.db")
    with pytest.raises(ConfigError):  # the default database is gone: a new, empty file
        create_app({"APP_ENV": "production"})
    app = create_app({"APP_ENV": "production", "DATABASE_URL": "sqlite:///elsewhere.db"})
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: new_key}, base_url="https://localhost"
    )
    assert response.json["name"] == "first"


def test_stale_credential_only_revoked_or_expired_keys_refuse_production(registry_key):
    revoked_key, _ = registry_key("gone", revoked=True)
    expired_key, _ = registry_key(
        "old", created=now() - timedelta(days=2), expires=now() - timedelta(days=1)
    )
    with pytest.raises(ConfigError, match="API_KEYS") as raised:
        create_app({"APP_ENV": "production"})
    assert revoked_key not in str(raised.value)
    assert expired_key not in str(raised.value)


@pytest.mark.parametrize("app_env", ["production", "testing"])
def test_a_database_without_the_schema_stops_start_up_naming_the_fix(tmp_path, key, app_env):
    (tmp_path / "instance" / "app.db").write_bytes(b"")  # an empty database: never migrated
    with pytest.raises(ConfigError, match="flask db upgrade") as raised:
        create_app({"APP_ENV": app_env, "API_KEYS": key})
    assert key not in str(raised.value)


@pytest.mark.parametrize("app_env", ["production", "testing"])
def test_an_unreachable_database_stops_start_up_without_its_password(key, app_env):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://api:hunter2@127.0.0.1:{port}/api"
    with pytest.raises(ConfigError, match="DATABASE_URL") as raised:
        create_app({"APP_ENV": app_env, "API_KEYS": key, "DATABASE_URL": url})
    assert "hunter2" not in str(raised.value)
    assert key not in str(raised.value)


def test_a_hand_edited_registry_row_is_refused_and_the_others_kept(make_app, registry_key, logs):
    good_key, _ = registry_key("good")
    app = make_app()
    bad_key, bad = registry_key("bad")
    later_key, _ = registry_key("later")
    with create_app({"APP_ENV": "testing"}).app_context():
        db.session.execute(
            update(ApiKey).where(ApiKey.id == bad.id).values(allowed_ips=["10.0.0.300/8"])
        )
        db.session.commit()
    logs.attach()  # each create_app sets up logging anew
    for _ in range(2):
        app.extensions["api_keys"].refresh()
    assert get(app, "/v1/whoami", bad_key).status_code == 401
    assert get(app, "/v1/whoami", good_key).status_code == 200
    assert get(app, "/v1/whoami", later_key).status_code == 200  # later changes still served
    errors = [line for line in logs.lines if " ERROR " in line]
    assert len(errors) == 1
    assert "'bad'" in errors[0]
    assert "10.0.0.300/8" in errors[0]
    assert bad_key not in logs.text
