"""Settings, read once from the environment, checked before the app serves anything.

Every variable is documented in the README. A bad value stops the app with a
:class:`ConfigError` that names the variable; API_KEYS values are never echoed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from pathlib import Path
{%- if cookiecutter.use_secret_scanning %}
from urllib.parse import urlsplit
{%- endif %}

{% if cookiecutter.use_rate_limiting -%}
from limits import parse_many
{% endif -%}
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .keys import KeyConfigError, parse_api_keys, parse_network

API_KEY_HEADER = "{{ cookiecutter.api_key_header }}"
ENVIRONMENTS = ("production", "development", "testing")
LOG_FORMATS = ("json", "text")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# An origin as a browser sends it: scheme, host, optional port; no path, no wildcard.
ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


class ConfigError(RuntimeError):
    """A setting is missing, malformed or unsafe; the app refuses to start."""


def load_config(environ: Mapping[str, str]) -> dict[str, object]:
    """Turn environment variables into Flask config values, or raise ConfigError."""
    app_env = environ.get("APP_ENV", "").strip() or "production"
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {app_env!r}")
    production = app_env == "production"
    log_format = environ.get("LOG_FORMAT", "").strip().lower() or ("json" if production else "text")
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be json or text, not {log_format!r}")
    log_level = environ.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if not isinstance(logging.getLevelName(log_level), int):
        raise ConfigError(f"LOG_LEVEL must be a logging level such as INFO, not {log_level!r}")
    return {
        "APP_ENV": app_env,
        "TESTING": app_env == "testing",
        "REQUIRE_HTTPS": _boolean(environ, "REQUIRE_HTTPS", default=production),
        "TRUSTED_PROXIES": _integer(environ, "TRUSTED_PROXIES", default=0, minimum=0),
        "API_ALLOWED_IPS": _networks(environ, "API_ALLOWED_IPS"),
        "CORS_ORIGINS": _origins(environ, "CORS_ORIGINS"),
        "API_KEYS": _api_keys(environ),
        "DATABASE_URL": database_url(environ),
{%- if cookiecutter.use_secret_scanning %}
        "SECRET_SCANNING_KEYS_URL": _keys_url(environ, "SECRET_SCANNING_KEYS_URL"),
{%- endif %}
        "MAX_CONTENT_LENGTH": _integer(environ, "MAX_CONTENT_LENGTH", default=1_048_576, minimum=1),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": log_level,
{%- if cookiecutter.use_rate_limiting %}
        "RATELIMIT_DEFAULT": _limit(environ, "RATELIMIT_DEFAULT", default="60/minute"),
        "RATELIMIT_STORAGE_URI": _storage_uri(environ, "RATELIMIT_STORAGE_URI"),
        "AUTH_FAILURE_LIMIT": _limit(environ, "AUTH_FAILURE_LIMIT", default="10/minute"),
{%- endif %}
    }


def database_url(environ: Mapping[str, str]) -> str:
    """DATABASE_URL, a SQLite file in instance/ by default; a relative SQLite path is
    resolved against the working directory (the project root, run as documented)."""
    raw = environ.get("DATABASE_URL", "").strip() or "sqlite:///instance/app.db"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Never echo the URL itself: it may hold a password.
        raise ConfigError(
            "DATABASE_URL must be a SQLAlchemy URL such as sqlite:///... "
            "or postgresql+psycopg://..."
        ) from None
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise ConfigError(
            f"DATABASE_URL: no installed driver for {url.drivername!r}; "
            "use sqlite:///... or postgresql+psycopg://..."
        ) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(url.database).absolute()))
    return url.render_as_string(hide_password=False)


def _api_keys(environ: Mapping[str, str]) -> tuple:
    """API_KEYS as (digest, record) pairs: only hashes are kept, never the keys themselves."""
    try:
        return tuple(parse_api_keys(environ.get("API_KEYS", "")))
    except KeyConfigError as error:
        raise ConfigError(str(error)) from None
{%- if cookiecutter.use_secret_scanning %}


# GitHub's secret-scanning public keys, which decide whose alert may revoke a key.
GITHUB_KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _keys_url(environ: Mapping[str, str], name: str) -> str:
    """Where GitHub's signing keys are fetched: https, or http to this machine only.

    Plain http elsewhere would let anyone on the path hand us their own "GitHub" key
    and forge alerts that revoke keys (man in the middle); on loopback there is no
    path to sit on, and a local stand-in (tests, a caching proxy) may serve it.
    """
    raw = environ.get(name, "").strip() or GITHUB_KEYS_URL
    try:
        url = urlsplit(raw)
    except ValueError:  # an unclosed [ of an IPv6 address
        url = urlsplit("")
    if url.hostname and (
        url.scheme == "https" or (url.scheme == "http" and url.hostname in LOOPBACK_HOSTS)
    ):
        return raw
    # Never echo the URL itself: it may carry a token.
    raise ConfigError(f"{name} must be an https:// URL (http:// only to localhost)")
{%- endif %}


def _boolean(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _integer(environ: Mapping[str, str], name: str, *, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise ConfigError(f"{name} must be a whole number of at least {minimum}, not {raw!r}")
    return int(raw)


def _networks(
    environ: Mapping[str, str], name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in environ.get(name, "").split(","))):
        try:
            networks.append(parse_network(item))
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
    return tuple(networks)


def _origins(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Exact origins only: a wildcard or a pattern would let any site's scripts call
    the API with a key they find in a user's browser (cross-origin abuse)."""
    origins = []
    for item in filter(None, (part.strip() for part in environ.get(name, "").split(","))):
        origin = item.lower()
        if not ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{name}: {item!r} is not an origin such as https://app.example.com "
                "(scheme and host, no path, no wildcard)"
            )
        origins.append(origin)
    return tuple(origins)
{%- if cookiecutter.use_rate_limiting %}


# Rate-limit storages the installed clients support (the `limits` library's URIs).
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")


def _limit(environ: Mapping[str, str], name: str, *, default: str) -> str:
    raw = environ.get(name, "").strip() or default
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a limit such as 60/minute, not {raw!r}") from None
    return raw


def _storage_uri(environ: Mapping[str, str], name: str) -> str:
    raw = environ.get(name, "").strip() or "memory://"
    if raw.partition("://")[0] not in STORAGE_SCHEMES:
        # Never echo the URI itself: it may hold a Redis password.
        raise ConfigError(f"{name} must start with one of {', '.join(STORAGE_SCHEMES)}://")
    return raw
{%- endif %}
