"""Shared fixtures: an app, its test client and CLI runner (as in Flask's testing docs),
a fresh API key per test, and a capture of the app's own formatted log lines.
"""

import json
import logging
import re
from datetime import UTC, datetime

import pytest

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


@pytest.fixture
def registry_path(tmp_path):
    """The key registry file: the default API_KEYS_FILE of this test's directory, which
    exists (the file itself does not, until a key is added)."""
    (tmp_path / "instance").mkdir()
    return tmp_path / "instance" / "api_keys.toml"


@pytest.fixture
def registry_key(registry_path):
    """Add a key to the registry file with chosen metadata; return (key, entry).

    ``created`` backdates the key, so that an expiry already past can be written the
    way ``flask keys`` would have written it; ``revoked=True`` revokes it afterwards.
    """

    def add(name="registry-key", *, created=None, revoked=False, **fields):
        now = datetime.now(UTC).replace(microsecond=0)
        with registry.editing(registry_path) as entries:
            new_key, entry = registry.create(entries, name, now=created or now, **fields)
            if revoked:
                entry = registry.revoke(entries, name, now=now)
        return new_key, entry

    return add


@pytest.fixture
def keys_cli(runner, registry_path):
    """Run ``flask keys ARGS...`` on registry_path as the user ``auditor``; return click's Result
    (``.stdout`` and ``.stderr`` apart). Keyword arguments are extra environment variables.

    The command sets up logging for its own (captured) stderr; the app's logging is put
    back afterwards, so requests made later in the test still log where they did.
    """

    def invoke(*args, input=None, **environ):
        logger = logging.getLogger(PACKAGE_LOGGER)
        saved = list(logger.handlers), logger.level, logger.propagate
        env = {"API_KEYS_FILE": str(registry_path), "USER": "auditor", **environ}
        try:
            return runner.invoke(keys_command, list(args), input=input, env=env)
        finally:
            logger.handlers[:] = saved[0]
            logger.setLevel(saved[1])
            logger.propagate = saved[2]

    return invoke
