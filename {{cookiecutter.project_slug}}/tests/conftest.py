"""Shared fixtures: an app, its test client and CLI runner (as in Flask's testing docs),
a fresh API key per test, and a capture of the app's own formatted log lines.
"""

import json
import logging
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dbcommands import upgrade
from flask.cli import ScriptInfo

from {{ cookiecutter.package_name }} import create_app, keys, registry
from {{ cookiecutter.package_name }} import logs as app_logs
from {{ cookiecutter.package_name }}.cli import keys as keys_command

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


# A run of random base62, as in a freshly generated key.
_RANDOM_RUN = re.compile(
    r"(?=[0-9A-Za-z]*[0-9])(?=[0-9A-Za-z]*[a-z])(?=[0-9A-Za-z]*[A-Z])[0-9A-Za-z]{30,}"
)


def pytest_make_parametrize_id(config, val, argname):
    """Name a parameter that holds a freshly generated key without its random part:
    every pytest-xdist worker must collect the same test ids, and reports show no key."""
    if isinstance(val, str) and _RANDOM_RUN.search(val):
        return _RANDOM_RUN.sub("<random>", val)
    return None


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Path:
    """A SQLite database made once per session by `flask db upgrade`, as a user makes one."""
    root = tmp_path_factory.mktemp("migrated")
    upgrade(f"sqlite:///{root / 'app.db'}", cwd=root)
    return root / "app.db"


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch, migrated_database):
    """Run each test in a directory of its own, holding a fresh copy of the migrated
    database where DATABASE_URL's default looks (instance/app.db), so no test sees
    another's keys or items, nor the developer's own files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "instance").mkdir()
    shutil.copyfile(migrated_database, tmp_path / "instance" / "app.db")


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
{%- if cookiecutter.use_rate_limiting %}
        # Limits out of the way; tests/test_ratelimit.py sets its own.
        limits = {"RATELIMIT_DEFAULT": "100000/minute", "AUTH_FAILURE_LIMIT": "100000/minute"}
        app = create_app({"APP_ENV": "testing", "API_KEYS": key, **limits, **environ})
{%- else %}
        app = create_app({"APP_ENV": "testing", "API_KEYS": key, **environ})
{%- endif %}
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
    put straight into the app's key store, next to the key from API_KEYS.
    """

    def issue(app, name="test-key", **fields):
        new_key = keys.generate_key()
        record = keys.KeyRecord(name=name, fingerprint=keys.fingerprint(new_key), **fields)
        app.extensions["api_keys"].add(keys.hash_key(new_key), record)
        return new_key

    return issue


@pytest.fixture
def registry_key():
    """Add a key to the registry with chosen metadata; return (key, entry).

    ``created`` backdates the key, so that an expiry already past can be written the
    way ``flask keys`` would have written it; ``revoked=True`` revokes it afterwards.
    An app already running sees it at its next look at the registry, at most a
    second later, or at once after ``app.extensions["api_keys"].refresh()``.
    """

    def add(name="registry-key", *, created=None, revoked=False, **fields):
        now = datetime.now(UTC).replace(microsecond=0)
        with create_app({"APP_ENV": "testing"}).app_context():
            new_key, entry = registry.create(name, now=created or now, **fields)
            if revoked:
                entry = registry.revoke(name, now=now)
        return new_key, entry

    return add


@pytest.fixture
def keys_cli(runner):
    """Run ``flask keys ARGS...`` as the user ``auditor`` on the test's app, or on an app of
    its own made from ``app_environ``; return click's Result (``.stdout`` and ``.stderr``
    apart). Other keyword arguments are extra environment variables.

    The command sets up logging for its own (captured) stderr; the app's logging is put
    back afterwards, so requests made later in the test still log where they did.
    """

    def invoke(*args, input=None, app_environ=None, **environ):
        logger = logging.getLogger(PACKAGE_LOGGER)
        saved = list(logger.handlers), logger.level, logger.propagate
        env = {"USER": "auditor", **environ}
        # With app_environ the command loads an app of its own, as `flask keys` does: without
        # the start-up checks a server makes (no schema yet, no key yet in production).
        own = {"obj": ScriptInfo(create_app=lambda: create_app(app_environ))} if app_environ else {}
        try:
            return runner.invoke(keys_command, list(args), input=input, env=env, **own)
        finally:
            logger.handlers[:] = saved[0]
            logger.setLevel(saved[1])
            logger.propagate = saved[2]

    return invoke


@pytest.fixture
def wait_for():
    """``wait_for(condition, seconds)``: poll on the real clock until ``condition()`` holds;
    fail after ``seconds``; return how long it took."""

    def wait(condition, seconds):
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < seconds, f"not within {seconds} s"
            time.sleep(0.05)
        return time.monotonic() - start

    return wait
