"""Settings from the environment: safe defaults, clear errors, and a production app
that refuses to start without a usable key (fail closed).
"""

import ipaddress

import pytest

from {{ cookiecutter.package_name }} import ConfigError, create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER, load_config

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
    assert config["API_KEYS_FILE"] == tmp_path.resolve() / "instance" / "api_keys.toml"


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
            "API_KEYS_FILE": str(tmp_path / "keys.toml"),
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
    assert config["API_KEYS_FILE"] == tmp_path / "keys.toml"
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
    assert len(app.extensions["api_keys"].ring) == 0
    response = app.test_client().get("/v1/whoami", headers={API_KEY_HEADER: keys.generate_key()})
    assert response.status_code == 401


def test_credential_over_plaintext_production_without_https_warns_at_start(key, capsys):
    create_app({"API_KEYS": key, "REQUIRE_HTTPS": "false"})
    assert "REQUIRE_HTTPS is off in production" in capsys.readouterr().err
