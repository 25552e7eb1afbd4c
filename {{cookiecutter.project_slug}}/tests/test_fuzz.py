"""Schemathesis fuzzes every operation of /openapi.json against the app, in process.

Each operation gets a few dozen generated requests, valid and not, sent with a
real key over "HTTPS" to a production app on a migrated database: no answer may
be a 500, and every answer must be one the document lists, with the body,
headers and content type it describes. A failure prints a curl command that
reproduces it (the key filtered out). The document is built from the routes'
decorators and models (openapi.py), so a route you add is fuzzed with no change here.

Schemathesis skips /openapi.json itself, the document it reads; test_openapi.py
covers that route.
"""

import tempfile
from pathlib import Path

import schemathesis
from dbcommands import upgrade
from hypothesis import settings
from schemathesis.checks import positive_data_acceptance

from {{ cookiecutter.package_name }} import create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

KEY = keys.generate_key()
# Removed when the test session ends.
DATABASE_DIRECTORY = tempfile.TemporaryDirectory(prefix="fuzz-")


def migrated_database() -> str:
    """The URL of a new SQLite database made by `flask db upgrade`, as conftest.py makes
    one: the app below is built at import, before any fixture runs, and must not touch
    the developer's own instance/app.db."""
    directory = Path(DATABASE_DIRECTORY.name)
    url = f"sqlite:///{directory / 'app.db'}"
    upgrade(url, cwd=directory)
    return url


# Built at import, as Schemathesis needs the document to make one test per operation.
app = create_app(
    {
        "APP_ENV": "production",
        "API_KEYS": KEY,
        "DATABASE_URL": migrated_database(),
{%- if cookiecutter.use_rate_limiting %}
        # Limits out of the way; tests/test_ratelimit.py tests them.
        "RATELIMIT_DEFAULT": "100000/minute",
        "AUTH_FAILURE_LIMIT": "100000/minute",
{%- endif %}
    }
)
# Production refuses plain HTTP, so the document is fetched, like every case, over HTTPS.
BASE_URL = "https://localhost"
schema = schemathesis.openapi.from_wsgi("/openapi.json", app, base_url=BASE_URL)
# A query parameter the API does not know is ignored, as by most HTTP APIs: not an error.
schema.config.generation.update(allow_extra_parameters=False)


@schema.parametrize()
# Fixed examples (derandomize): the suite stays fast and a failure comes back on every run.
@settings(max_examples=40, deadline=None, derandomize=True)
def test_every_operation_answers_as_documented(case):
    case.call_and_validate(
        base_url=BASE_URL,
        headers={API_KEY_HEADER: KEY},
        excluded_checks=[positive_data_acceptance] if may_refuse_valid_data(case) else [],
    )


def may_refuse_valid_data(case) -> bool:
    """True when a request that fits the document may still be refused, rightly.

    A cursor is opaque: only one the API gave out is valid, which no schema can say.
    A new key's values (its networks, its name) are checked by the registry beyond
    what a schema holds, and a name may be taken already (409).
    """
    return "cursor" in (case.query or {}) or case.path.startswith("/v1/keys")
