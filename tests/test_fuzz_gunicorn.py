"""A larger Schemathesis pass than the project's own, against a real gunicorn.

The generated project fuzzes its document in process; here the same document,
fetched from a production server behind one trusted proxy hop, drives a few
hundred generated requests per operation over real HTTP, through gunicorn's
parser and the project's own worker. No answer may be a 500, and every answer
must be one the document lists, with the body and content type it describes.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from bakery import free_port, gunicorn_command, gunicorn_env, wait_until_healthy

pytestmark = pytest.mark.slow

# Every request comes "from HTTPS" through the one proxy hop gunicorn is told to trust.
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
# Generated requests per operation: several times the project's own pass.
EXAMPLES = 150


@pytest.fixture
def served(default_project, project_copy, start, tmp_path):
    """The default project under gunicorn in production, limits out of the way."""
    port = free_port()
    env = gunicorn_env(
        default_project,
        port,
        tmp_path,
        TRUSTED_PROXIES="1",
        RATELIMIT_DEFAULT="1000000/minute",
        AUTH_FAILURE_LIMIT="1000000/minute",
    )
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    key_header = default_project.context["api_key_header"]
    return server, base, {key_header: env["API_KEYS"], **FORWARDED}


def test_no_request_content_makes_a_500_under_gunicorn(served):
    server, base, headers = served
    document = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=headers)
    document.config.generation.update(allow_extra_parameters=False)
    fuzzed = []
    for found in document.get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def answers_as_documented(case):
            # A made-up cursor is a string as documented, yet only one the API gave out
            # is valid; a new key's networks and name are checked beyond what a schema
            # says, and a name may be taken (409): refusing those is right.
            may_refuse = "cursor" in (case.query or {}) or case.path.startswith("/v1/keys")
            case.call_and_validate(
                base_url=base,
                headers=headers,
                excluded_checks=[positive_data_acceptance] if may_refuse else [],
            )

        answers_as_documented()
        fuzzed.append(operation.label)
    assert len(fuzzed) >= 8, fuzzed
    # The key opened the API: items were created, not only refusals answered.
    assert '"status": 201' in server.output()
    assert "Traceback" not in server.output()
