"""Shared fixtures: an app, its test client and CLI runner (as in Flask's testing docs),
a fresh API key per test, and a capture of the app's own formatted log lines.
"""

import json
import logging

import pytest

from {{ cookiecutter.package_name }} import create_app, keys
from {{ cookiecutter.package_name }} import logs as app_logs

# The package logger: propagate=False with its own stderr handler, so caplog cannot see it.
PACKAGE_LOGGER = create_app.__module__


class LogCapture(logging.Handler):
    """Keep every line the app logs, formatted exactly as its own handler formats it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def json(self) -> list[dict]:
        """The lines parsed as JSON (with LOG_FORMAT=json): each must be one object."""
        return [json.loads(line) for line in self.lines]

    def attach(self) -> None:
        """Copy the formatter and filters of the handler create_app just configured."""
        logger = logging.getLogger(PACKAGE_LOGGER)
        own = next(
            handler
            for handler in logger.handlers
            if any(isinstance(f, app_logs.RequestIdFilter) for f in handler.filters)
        )
        self.setFormatter(own.formatter)
        self.filters = list(own.filters)
        if self not in logger.handlers:
            logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(self)


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    """Run each test in an empty directory, so that relative paths such as the default
    API_KEYS_FILE (instance/api_keys.toml) never pick up the developer's own files."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def key():
    """A new well-formed key, configured in API_KEYS of every app built here."""
    return keys.generate_key()


@pytest.fixture
def logs():
    """The formatted log lines of the app under test (attached by make_app)."""
    capture = LogCapture()
    yield capture
    capture.detach()


@pytest.fixture
def make_app(key, logs):
    """Build an app from environment variables: testing, with ``key``, unless overridden."""

    def make(**environ):
        app = create_app({"APP_ENV": "testing", "API_KEYS": key, **environ})
        # create_app reconfigures logging, so capture after it, with its formatter.
        logs.attach()
        return app

    return make


@pytest.fixture
def app(make_app):
    """The app as tests use it: APP_ENV=testing and one key with every scope."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask's test client for ``app``."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """Flask's CLI runner for ``app``."""
    return app.test_cli_runner()


@pytest.fixture
def issue_key(key):
    """Give an app a key with a chosen record (scopes, expiry, allowlist); return the key.

    API_KEYS can only hold keys with every scope, so scoped or expiring keys are
    put straight into the app's key ring, next to the key from API_KEYS.
    """

    def issue(app, name="test-key", **fields):
        new_key = keys.generate_key()
        record = keys.KeyRecord(name=name, fingerprint=keys.fingerprint(new_key), **fields)
        issued = app.extensions.setdefault("test_issued_keys", [])
        issued.append((keys.hash_key(new_key), record))
        app.extensions["api_keys"] = keys.KeyRing([*keys.parse_api_keys(key), *issued])
        return new_key

    return issue
