"""Settings from the environment: safe defaults, clear errors, and an app that refuses
to start without a usable key in production, or without its database (fail closed).
"""

import ipaddress
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url

from {{ cookiecutter.package_name }} import ConfigError, create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER, load_config

# A database password that must never be shown.
PASSWORD = "hunter2"

OTHER_PREFIX = "zz" if keys.KEY_PREFIX != "zz" else "yy"


def with_typo(key):
    """The key with its last checksum character changed."""
    return key[:-1] + ("0" if key[-1] != "0" else "1")


def test_defaults_are_production(tmp_path):
    # conftest runs every test in tmp_path, the project root stand-in.
    config = load_config({})
    assert config["APP_ENV"] == "production"
    assert config["TESTING"] is False
    assert config["REQUIRE_HTTPS"] is True
    assert config["TRUSTED_PROXIES"] == 0
    assert config["API_ALLOWED_IPS"] == ()
    assert config["MAX_CONTENT_LENGTH"] == 1048576
    assert config["LOG_FORMAT"] == "json"
    assert config["LOG_LEVEL"] == "INFO"
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'instance' / 'app.db'}"


@pytest.mark.parametrize("app_env", ["development", "testing"])
def test_defaults_outside_production(app_env):
    config = load_config({"APP_ENV": app_env})
    assert config["APP_ENV"] == app_env
    assert config["TESTING"] is (app_env == "testing")
    assert config["REQUIRE_HTTPS"] is False
    assert config["LOG_FORMAT"] == "text"


def test_values_are_read_and_normalised(tmp_path):
    config = load_config(
        {
            "APP_ENV": " development ",
            "REQUIRE_HTTPS": "Yes",
            "TRUSTED_PROXIES": "2",
            "API_ALLOWED_IPS": "10.0.0.0/8, 2001:db8::/32,,192.0.2.7",
            "DATABASE_URL": f"postgresql+psycopg://app:{PASSWORD}@db.internal:5433/api",
            "MAX_CONTENT_LENGTH": "4096",
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "debug",
        }
    )
    assert config["APP_ENV"] == "development"
    assert config["REQUIRE_HTTPS"] is True
    assert config["TRUSTED_PROXIES"] == 2
    assert config["API_ALLOWED_IPS"] == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    # Kept whole, password included: the app needs it to connect (and never shows it).
    assert config["DATABASE_URL"] == f"postgresql+psycopg://app:{PASSWORD}@db.internal:5433/api"
    assert config["MAX_CONTENT_LENGTH"] == 4096
    assert config["LOG_FORMAT"] == "json"
    assert config["LOG_LEVEL"] == "DEBUG"


def test_production_can_turn_settings_off_explicitly():
    config = load_config({"REQUIRE_HTTPS": "false", "LOG_FORMAT": "text"})
    assert config["REQUIRE_HTTPS"] is False
    assert config["LOG_FORMAT"] == "text"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APP_ENV", "staging"),
        ("REQUIRE_HTTPS", "maybe"),
        ("TRUSTED_PROXIES", "-1"),
        ("TRUSTED_PROXIES", "one"),
        ("TRUSTED_PROXIES", "²"),
        ("API_ALLOWED_IPS", "nonsense"),
        ("API_ALLOWED_IPS", "10.0.0.0/8,300.1.1.1"),
        ("MAX_CONTENT_LENGTH", "0"),
        ("MAX_CONTENT_LENGTH", "1e6"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({"APP_ENV": "testing", name: value})


def test_production_refuses_to_start_without_a_key():
    with pytest.raises(ConfigError) as caught:
        create_app({})
    assert "API_KEYS" in str(caught.value)


def test_production_refuses_to_start_with_only_blank_keys():
    with pytest.raises(ConfigError, match="API_KEYS"):
        create_app({"APP_ENV": "production", "API_KEYS": " , "})


@pytest.mark.parametrize(
    "bad",
    [
        "changeme",
        "12345",
        keys.generate_key(prefix=OTHER_PREFIX),
        with_typo(keys.generate_key()),
        "sha256:" + "0" * 63,
    ],
    ids=["placeholder", "digits", "wrong-prefix", "bad-checksum", "short-hash"],
)
def test_default_credentials_placeholder_key_refuses_start_without_echo(bad):
    with pytest.raises(ConfigError) as caught:
        create_app({"API_KEYS": bad})
    message = str(caught.value)
    assert "API_KEYS" in message
    assert bad not in message
    assert "\n" not in message


def test_production_starts_with_a_valid_key(key):
    app = create_app({"API_KEYS": key})
    assert app.config["APP_ENV"] == "production"
    assert app.config["REQUIRE_HTTPS"] is True
    assert not app.testing
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: key}, base_url="https://localhost"
    )
    assert response.status_code == 200


def test_production_starts_with_a_hashed_entry_only(key):
    app = create_app({"API_KEYS": keys.hashed_entry(key)})
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: key}, base_url="https://localhost"
    )
    assert response.status_code == 200
    assert response.json["fingerprint"] == keys.fingerprint(key)


@pytest.mark.parametrize("app_env", ["development", "testing"])
def test_no_key_is_allowed_outside_production(app_env):
    app = create_app({"APP_ENV": app_env})
    assert len(app.extensions["api_keys"]) == 0
    response = app.test_client().get("/v1/whoami", headers={API_KEY_HEADER: keys.generate_key()})
    assert response.status_code == 401


def test_credential_over_plaintext_production_without_https_warns_at_start(key, capsys):
    create_app({"API_KEYS": key, "REQUIRE_HTTPS": "false"})
    assert "REQUIRE_HTTPS is off in production" in capsys.readouterr().err


def closed_port():
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line_without_password(error):
    message = str(error.value)
    assert "\n" not in message
    assert PASSWORD not in message
    return message


@pytest.mark.parametrize(
    "url",
    ["sqlite:///data/app.db", "sqlite:///./data/app.db", "sqlite:///data/../data/app.db"],
)
def test_a_relative_sqlite_url_is_resolved_against_the_working_directory(tmp_path, url):
    config = load_config({"DATABASE_URL": url})
    database = Path(make_url(config["DATABASE_URL"]).database)
    assert database.is_absolute()
    assert database.resolve() == (tmp_path / "data" / "app.db").resolve()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_url_is_kept(url):
    assert make_url(load_config({"DATABASE_URL": url})["DATABASE_URL"]) == make_url(url)


def test_the_database_is_found_where_the_app_started_not_where_it_runs(tmp_path, monkeypatch, key):
    """Relative to the directory the app started in: a later chdir (a worker, a library)
    does not move it."""
    (tmp_path / "data").mkdir()
    shutil.copyfile("instance/app.db", tmp_path / "data" / "api.db")
    app = create_app(
        {"APP_ENV": "testing", "API_KEYS": key, "DATABASE_URL": "sqlite:///data/api.db"}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = app.test_client()
    created = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: key})
    assert created.status_code == 201
    with sqlite3.connect(tmp_path / "data" / "api.db") as connection:
        assert connection.execute("SELECT name FROM items").fetchall() == [("x",)]
    assert not (elsewhere / "data").exists()


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        f"postgresql+psycopg://app:{PASSWORD}@db:port/api",
        f"mysql://app:{PASSWORD}@db/api",  # a driver that is not installed
        f"nosuchdb://app:{PASSWORD}@db/api",
    ],
    ids=["not-a-url", "bad-port", "no-driver", "no-dialect"],
)
def test_a_bad_database_url_is_one_line_without_its_password(url):
    with pytest.raises(ConfigError) as error:
        create_app({"APP_ENV": "testing", "DATABASE_URL": url})
    assert "DATABASE_URL" in one_line_without_password(error)


def test_an_unmigrated_database_refuses_to_serve(tmp_path, key):
    """A database with no tables (a new one, or one nobody migrated): not served from."""
    with pytest.raises(ConfigError) as error:
        create_app({"API_KEYS": key, "DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"})
    assert "flask db upgrade" in one_line_without_password(error)


def test_a_database_at_another_migration_refuses_to_serve(key):
    """A schema migrated by other code (newer, or a branch) is not this code's schema."""
    with sqlite3.connect("instance/app.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfacef00d'")
    with pytest.raises(ConfigError) as error:
        create_app({"API_KEYS": key})
    assert "flask db upgrade" in one_line_without_password(error)


@pytest.mark.parametrize("app_env", ["production", "testing"])
def test_an_unreachable_database_refuses_to_serve_without_its_password(key, app_env):
    port = closed_port()
    url = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{port}/api"
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        create_app({"APP_ENV": app_env, "API_KEYS": key, "DATABASE_URL": url})
    message = one_line_without_password(error)
    assert "DATABASE_URL" in message
    assert "flask db upgrade" not in message  # not a schema problem: say so
    assert time.monotonic() - started < 10
