"""Schemathesis fuzzes every operation of /openapi.json against the app, in process.

Each operation gets a few dozen generated requests, valid and not, sent with a
real key over "HTTPS" to a production app: no answer may be a 500, and every
answer must be one the document lists, with the body, headers and content type
it describes. A failure prints a curl command that reproduces it (the key
filtered out). Change openapi.py with api.py, and this test keeps them honest.

Schemathesis skips /openapi.json itself, the document it reads; test_openapi.py
covers that route.
"""

import os

import schemathesis
from hypothesis import settings

from {{ cookiecutter.package_name }} import create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

KEY = keys.generate_key()
# Built at import, as Schemathesis needs the document to make one test per operation.
# The registry is os.devnull, an empty file: the developer's instance/ stays out of it.
app = create_app(
    {
        "APP_ENV": "production",
        "API_KEYS": KEY,
        "API_KEYS_FILE": os.devnull,
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


@schema.parametrize()
# Fixed examples (derandomize): the suite stays fast and a failure comes back on every run.
@settings(max_examples=40, deadline=None, derandomize=True)
def test_every_operation_answers_as_documented(case):
    case.call_and_validate(base_url=BASE_URL, headers={API_KEY_HEADER: KEY})
