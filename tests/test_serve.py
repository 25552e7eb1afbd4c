"""The default project served as documented: gunicorn from the project root, in production.

Each server runs in a private copy of the project whose database `flask db
upgrade` made first, as the README says. Requests go over real sockets with
``requests``; a TLS-terminating proxy is played by sending ``X-Forwarded-Proto:
https`` with TRUSTED_PROXIES=1.
"""

from __future__ import annotations

import json

import pytest
import requests

from bakery import (
    clean_env,
    free_port,
    gunicorn_command,
    gunicorn_env,
    json_lines,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

ONE_YEAR = 365 * 24 * 3600


@pytest.fixture
def served(default_project, project_copy, start, tmp_path):
    """The default project under gunicorn, in production, behind one trusted proxy hop."""
    port = free_port()
    env = gunicorn_env(default_project, port, tmp_path, TRUSTED_PROXIES="1")
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    return server, base, env["API_KEYS"]


def test_gunicorn_serves_the_api_in_production(served, default_project):
    """Over 'HTTPS' the key opens the API; without it, or over plain HTTP, it does not."""
    server, base, key = served
    header = default_project.context["api_key_header"]
    https = {"X-Forwarded-Proto": "https"}
    url = f"{base}/v1/secure-data"

    missing = requests.get(url, headers=https, timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"] == "missing_api_key"
    assert "WWW-Authenticate" in missing.headers

    ok = requests.get(f"{url}?note=query-string-marker", headers={**https, header: key}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert "data" in ok.json()
    assert ok.headers.get("X-Request-ID")
    hsts = ok.headers["Strict-Transport-Security"]
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= ONE_YEAR

    plain = requests.get(url, headers={header: key}, timeout=10)
    assert plain.status_code == 403
    assert plain.json()["error"] == "https_required"
    assert plain.headers.get("X-Request-ID")
    assert "Strict-Transport-Security" in plain.headers

    assert server.stop() == 0, server.output()
    logged = server.output()
    assert key not in logged, "the raw key reached the log"
    assert "query-string-marker" not in logged, "the query string reached the log"
    records = json_lines(logged)
    access = [record for record in records if "/v1/secure-data" in json.dumps(record)]
    assert len(access) >= 3, f"no JSON access lines:\n{logged}"
    assert any(record.get("status") == 200 for record in access), access
    # A valid key over plain HTTP is an exposed credential: logged at ERROR for rotation.
    assert any(record.get("level", record.get("levelname")) == "ERROR" for record in records)


def test_gunicorn_trusts_no_forwarded_header_by_default(
    default_project, project_copy, start, tmp_path
):
    """TRUSTED_PROXIES=0: X-Forwarded-Proto is ignored by the app and by gunicorn itself."""
    port = free_port()
    env = gunicorn_env(default_project, port, tmp_path)
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    header = default_project.context["api_key_header"]
    spoofed = requests.get(
        f"{base}/v1/secure-data",
        headers={"X-Forwarded-Proto": "https", header: env["API_KEYS"]},
        timeout=10,
    )
    assert spoofed.status_code == 403
    assert spoofed.json()["error"] == "https_required"


@pytest.mark.parametrize("api_keys", [None, "", "changeme", "12345"], ids=repr)
def test_gunicorn_refuses_to_start_without_a_real_key(
    default_project, project_copy, start, tmp_path, api_keys
):
    """Fail closed: no key or a placeholder stops gunicorn, naming API_KEYS, not the value.

    The database is ready and its registry empty: only the key is missing.
    """
    env = gunicorn_env(default_project, free_port(), tmp_path)
    if api_keys is None:
        del env["API_KEYS"]
    else:
        env["API_KEYS"] = api_keys
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    status = server.wait_exit(20)
    assert status is not None, f"gunicorn kept running:\n{server.output()}"
    assert status != 0
    logged = server.output()
    assert "API_KEYS" in logged
    if api_keys:
        assert api_keys not in logged, "the bad value was echoed"


# A password that must never be shown, in a URL where nothing listens.
NEVER_SHOWN = "pw-never-shown-4a7c"


@pytest.mark.parametrize("database", ["not-migrated", "unreachable"])
def test_gunicorn_refuses_to_start_without_its_database(
    default_project, project_copy, start, tmp_path, database
):
    """Fail closed: a database behind its migrations, or one that does not answer, stops
    gunicorn with one line naming `flask db upgrade` or DATABASE_URL, never its password."""
    env = gunicorn_env(default_project, free_port(), tmp_path)
    if database == "unreachable":
        env["DATABASE_URL"] = f"postgresql+psycopg://app:{NEVER_SHOWN}@127.0.0.1:{free_port()}/app"
        expected = "DATABASE_URL"
    else:
        expected = "flask db upgrade"
    root = project_copy(default_project)  # no `flask db upgrade`
    server = start(gunicorn_command(default_project), root, env)
    status = server.wait_exit(20)
    assert status is not None, f"gunicorn kept running:\n{server.output()}"
    assert status != 0
    logged = server.output()
    explained = [line for line in logged.splitlines() if expected in line]
    assert len(explained) == 1, logged
    assert NEVER_SHOWN not in logged, "the database password was shown"
    assert "Traceback" not in logged


@pytest.mark.parametrize("skip_dotenv", [False, True], ids=["with-dotenv", "skip-dotenv"])
def test_flask_run_refuses_to_start_with_a_placeholder_key(
    default_project, project_copy, start, skip_dotenv
):
    """`flask run` in production with API_KEYS=12345 exits non-zero without echoing it.

    The real environment wins over .env, whose development settings must not
    rescue a production start.
    """
    env = clean_env(
        PYTHONPATH="src",
        APP_ENV="production",
        API_KEYS="12345",
        FLASK_APP=default_project.package,
    )
    if skip_dotenv:
        env["FLASK_SKIP_DOTENV"] = "1"
    command = [*tool("flask"), "run", "--port", str(free_port())]
    root = project_copy(default_project, migrated=True)
    server = start(command, root, env)
    status = server.wait_exit(20)
    assert status is not None, f"flask run kept running:\n{server.output()}"
    assert status != 0
    logged = server.output()
    assert "API_KEYS" in logged
    assert "12345" not in logged
