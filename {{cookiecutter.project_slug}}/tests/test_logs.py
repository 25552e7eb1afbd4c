"""Logs (logs.py): one access line per request, a warning per refusal, one line per
record whatever the request holds, request ids, and never a raw key.
"""

import json
import re

import pytest

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

HTTPS = "https://localhost"
# Control characters (C0, DEL, C1) and Unicode line/paragraph separators.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
INJECTED_PATH = "/v1/%0D%0A2030-01-01 00:00:00,000 ERROR fake%1B[31m%E2%80%A8end"


def access_lines(logs):
    return [line for line in logs.lines if ".access" in line]


def test_one_access_line_per_request(client, key, logs):
    client.get(
        "/v1/whoami",
        query_string={"page": "2"},
        headers={API_KEY_HEADER: key, "X-Request-ID": "req-123"},
    )
    client.get("/health")
    lines = access_lines(logs)
    assert len(lines) == 2
    assert re.search(r"GET /v1/whoami 200 \d+\.\dms ip=127\.0\.0\.1 key=api-keys-1$", lines[0])
    assert "[req-123]" in lines[0]
    assert "page" not in lines[0]
    assert "?" not in lines[0]
    assert "GET /health 200" in lines[1]


def test_access_line_in_json(make_app, key, logs):
    client = make_app(LOG_FORMAT="json").test_client()
    response = client.get(
        "/v1/items",
        query_string={"secret": "s3cr3t"},
        headers={API_KEY_HEADER: key},
        environ_base={"REMOTE_ADDR": "2001:db8::7"},
    )
    (line,) = logs.json()
    assert line["level"] == "INFO"
    assert line["logger"].endswith(".access")
    assert line["method"] == "GET"
    assert line["path"] == "/v1/items"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["client_ip"] == "2001:db8::7"
    assert line["api_key"] == "api-keys-1"
    assert "timestamp" in line
    assert "s3cr3t" not in logs.text


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (None, "missing_api_key"),
        ("changeme", "invalid_api_key"),
        (keys.generate_key(), "invalid_api_key"),
    ],
)
def test_failed_authentication_is_a_warning_with_reason_and_fingerprint(
    make_app, logs, presented, reason
):
    client = make_app(LOG_FORMAT="json").test_client()
    headers = {API_KEY_HEADER: presented} if presented else {}
    response = client.get("/v1/whoami", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    warning, access = logs.json()
    assert warning["level"] == "WARNING"
    assert warning["reason"] == reason
    assert warning["client_ip"] == "192.0.2.9"
    assert reason in warning["message"]
    assert "192.0.2.9" in warning["message"]
    assert warning["request_id"] == access["request_id"] == response.headers["X-Request-ID"]
    if presented:
        assert keys.fingerprint(presented) in warning["message"]
        assert access["api_key"] == keys.fingerprint(presented)
        assert presented not in logs.text
    assert access["status"] == 401


def test_refusals_by_a_known_key_are_warnings_too(make_app, key, logs):
    client = make_app(API_ALLOWED_IPS="192.0.2.0/24").test_client()
    client.get("/v1/whoami", headers={API_KEY_HEADER: key})
    (warning,) = [line for line in logs.lines if " WARNING " in line]
    assert "ip_not_allowed" in warning
    assert keys.fingerprint(key) in warning


def test_successful_requests_log_no_warning(client, key, logs):
    client.get("/v1/whoami", headers={API_KEY_HEADER: key})
    assert [line for line in logs.lines if " WARNING " in line or " ERROR " in line] == []


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credential_leak_raw_key_never_logged(make_app, key, logs, log_format):
    app = make_app(APP_ENV="production", LOG_FORMAT=log_format)
    client = app.test_client()
    guess = keys.generate_key()
    sent = [key, guess]
    for base_url in (HTTPS, "http://localhost"):
        for presented in sent:
            client.get("/v1/whoami", headers={API_KEY_HEADER: presented}, base_url=base_url)
            client.get("/v1/whoami", query_string={"api_key": presented}, base_url=base_url)
            client.get("/nowhere", query_string={API_KEY_HEADER: presented}, base_url=base_url)
            client.post(
                "/v1/items", json={"api_key": presented}, headers={"Cookie": f"k={presented}"}
            )
    assert len(access_lines(logs)) == 2 * 2 * 4
    # Exposed over HTTP: logged as an error naming the key, by name and fingerprint only.
    assert "rotate" in logs.text
    for presented in sent:
        assert presented not in logs.text
        assert presented[len(keys.KEY_PREFIX) + 1 :] not in logs.text


def test_log_injection_through_the_path_is_escaped_in_text(client, logs):
    response = client.get(INJECTED_PATH)
    assert response.status_code == 404
    (line,) = logs.lines
    assert not UNSAFE.search(line)
    assert "\\x0d\\x0a2030-01-01" in line
    assert "\\x1b[31m" in line
    assert "\\u2028end" in line


def test_log_injection_through_the_path_keeps_json_one_line(make_app, logs):
    client = make_app(LOG_FORMAT="json").test_client()
    response = client.get(INJECTED_PATH, headers={API_KEY_HEADER: "x\x1b[2J"})
    assert response.status_code == 404
    (line,) = logs.lines
    assert not UNSAFE.search(line)
    # Escaped, not lost: the JSON still says exactly what was requested.
    assert json.loads(line)["path"] == "/v1/\r\n2030-01-01 00:00:00,000 ERROR fake\x1b[31m\u2028end"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_injection_through_the_request_id_is_refused(make_app, logs, log_format):
    client = make_app(LOG_FORMAT=log_format).test_client()
    escape = client.get("/v1/whoami", headers={"X-Request-ID": "id\x1b[31mred"})
    newline = client.get(
        "/v1/whoami", environ_overrides={"HTTP_X_REQUEST_ID": "id\r\nFAKE WARNING line"}
    )
    for response in (escape, newline):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    # The warning of the first refusal, then one access line each (the same refusal
    # again is not logged twice: log flooding).
    assert len(logs.lines) == 3
    assert not any(UNSAFE.search(line) for line in logs.lines)
    assert "red" not in logs.text
    assert "FAKE" not in logs.text
    if log_format == "json":
        access = [line for line in logs.json() if line["logger"].endswith(".access")]
        assert [line["request_id"] for line in access] == [
            escape.headers["X-Request-ID"],
            newline.headers["X-Request-ID"],
        ]


def test_log_injection_through_forwarded_for_is_escaped(make_app, key, logs):
    client = make_app(TRUSTED_PROXIES="1").test_client()
    client.get("/v1/whoami", headers={"X-Forwarded-For": "\x1b[31m192.0.2.1\x7f"})
    assert not any(UNSAFE.search(line) for line in logs.lines)
    # Not an address: the client is unknown, and nothing of the header is logged.
    assert "192.0.2.1" not in logs.text
    assert "ip=unknown " in logs.lines[-1]


@pytest.mark.parametrize(
    "request_id",
    ["abc", "req-1.2_3:4", "A" * 64, "6f1c2b7e-3a9d-4e55-9c1e-2d0f5a8b7c61"],
)
def test_safe_request_id_is_echoed_and_logged(client, logs, request_id):
    response = client.get("/health", headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id
    assert f"[{request_id}]" in logs.lines[0]


@pytest.mark.parametrize(
    "request_id",
    ["", "A" * 65, "has space", "semi;colon", 'quote"', "ключ", "a/b", "<script>"],
)
def test_log_flooding_unsafe_request_id_is_replaced(client, logs, request_id):
    response = client.get("/health", headers={"X-Request-ID": request_id})
    generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert f"[{generated}]" in logs.lines[0]


def test_every_response_carries_a_request_id(make_app, key):
    app = make_app(APP_ENV="production")

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    client = app.test_client()
    responses = [
        client.get("/health"),
        client.get("/v1/whoami"),
        client.get("/v1/whoami", base_url=HTTPS),
        client.get("/v1/whoami", headers={API_KEY_HEADER: key}, base_url=HTTPS),
        client.get("/nowhere", base_url=HTTPS),
        client.delete("/health", base_url=HTTPS),
        client.get("/boom", base_url=HTTPS),
    ]
    assert [response.status_code for response in responses] == [200, 403, 401, 200, 404, 405, 500]
    ids = [response.headers["X-Request-ID"] for response in responses]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credential_leak_key_pasted_into_the_path_is_redacted(make_app, key, logs, log_format):
    client = make_app(LOG_FORMAT=log_format).test_client()
    response = client.get(f"/v1/{key}", headers={API_KEY_HEADER: key})
    assert response.status_code == 404
    assert key not in logs.text
    assert f"[key {keys.fingerprint(key)}]" in logs.text


def test_log_injection_through_an_exception_message_is_escaped(make_app, key, logs):
    app = make_app(LOG_FORMAT="text")

    @app.get("/boom")
    def boom():
        raise RuntimeError("bad input \x1b[31m red")

    assert app.test_client().get("/boom").status_code == 500
    assert "\x1b" not in logs.text
    assert "\\x1b[31m" in logs.text
    # The traceback itself still reads as lines.
    assert "Traceback (most recent call last):\n" in logs.text
