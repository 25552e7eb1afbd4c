"""Every error is one JSON shape, {"error", "message"}, and leaks nothing (errors.py)."""

import io
import json
from datetime import UTC, datetime
from unittest.mock import ANY

import pytest
from sqlalchemy import func, select

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import ITEM_NAME_LENGTH, Item
from {{ cookiecutter.package_name }}.openapi import ERROR_RESPONSES

HTTPS = "https://localhost"


def documented(status):
    """The error codes /openapi.json promises for ``status``."""
    return ERROR_RESPONSES[status][2]


def item_count(app):
    """How many items the app's database holds, whoever owns them."""
    with app.app_context():
        return db.session.scalar(select(func.count(Item.id)))


# Each row: environment, method, path, request arguments, status, error code.
# The request carries the app's valid key unless its arguments set the headers.
JSON = "application/json"
ERROR_TABLE = [
    (dict(APP_ENV="production"), "GET", "/v1/whoami", dict(), 403, "https_required"),
    (dict(), "GET", "/v1/whoami", dict(headers=dict()), 401, "missing_api_key"),
    (dict(), "GET", "/v1/whoami", dict(headers={API_KEY_HEADER: "x"}), 401, "invalid_api_key"),
    (dict(API_ALLOWED_IPS="192.0.2.0/24"), "GET", "/v1/whoami", dict(), 403, "ip_not_allowed"),
    (dict(), "GET", "/nowhere", dict(), 404, "not_found"),
    (dict(), "DELETE", "/v1/whoami", dict(), 405, "method_not_allowed"),
    (
        dict(MAX_CONTENT_LENGTH="64"),
        "POST",
        "/v1/items",
        dict(data="[" + "0," * 40 + "0]", content_type=JSON),
        413,
        "request_entity_too_large",
    ),
    (dict(), "POST", "/v1/items", dict(data="name=x"), 415, "unsupported_media_type"),
    (dict(), "POST", "/v1/items", dict(data="[", content_type=JSON), 400, "bad_request"),
    (dict(), "POST", "/v1/items", dict(json=dict(name="")), 422, "invalid_body"),
    (dict(), "GET", "/v1/items", dict(query_string=dict(limit="0")), 422, "invalid_parameter"),
    (dict(), "GET", "/v1/items", dict(query_string=dict(cursor="x")), 422, "invalid_parameter"),
    (dict(), "GET", "/v1/items/12345", dict(), 404, "not_found"),
]


@pytest.mark.parametrize(
    ("environ", "method", "path", "arguments", "status", "code"),
    ERROR_TABLE,
    ids=[f"{row[-1]}-{row[2]}" for row in ERROR_TABLE],
)
def test_error_table(make_app, key, environ, method, path, arguments, status, code):
    arguments = {"headers": {API_KEY_HEADER: key}, **arguments}
    client = make_app(**environ).test_client()
    response = client.open(path, method=method, **arguments)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.json == {"error": code, "message": ANY}
    assert response.json["message"]
    assert key not in response.get_data(as_text=True)
    if status == 401:
        assert API_KEY_HEADER in response.headers["WWW-Authenticate"]
    else:
        assert "WWW-Authenticate" not in response.headers
    if status in ERROR_RESPONSES:
        assert code in documented(status)


def test_expired_key_error(app, client, issue_key):
    expired = issue_key(app, expires=datetime(2000, 1, 1, tzinfo=UTC))
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: expired})
    assert response.status_code == 401
    assert response.json == {"error": "expired_api_key", "message": ANY}
    assert "WWW-Authenticate" in response.headers
    assert "expired_api_key" in documented(401)


def test_insufficient_scope_error(app, client, issue_key):
    reader = issue_key(app, scopes=frozenset({"items:read"}))
    response = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
    assert response.status_code == 403
    assert response.json == {"error": "insufficient_scope", "message": ANY}
    assert "insufficient_scope" in documented(403)


def test_method_not_allowed_keeps_allow_header(client):
    response = client.delete("/v1/items")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= set(["GET", "POST"])


def test_unknown_route_says_nothing_about_the_request(client, key):
    response = client.get("/admin/secret-route", query_string={"api_key": key})
    assert response.status_code == 404
    assert "secret-route" not in response.get_data(as_text=True)
    assert key not in response.get_data(as_text=True)


def test_information_disclosure_crash_hides_the_traceback(app, client, key, logs):
    @app.get("/boom")
    def boom():
        raise RuntimeError("database password is hunter2")

    response = client.get("/boom", headers={API_KEY_HEADER: key})
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert response.json == {"error": "internal_error", "message": ANY}
    assert "hunter2" not in body
    assert "Traceback" not in body
    assert "RuntimeError" not in body
    # The details go to the log instead, for the operator.
    assert "Traceback" in logs.text
    assert "hunter2" in logs.text
    assert any(" ERROR " in line for line in logs.lines)


def test_information_disclosure_crash_in_production(make_app, key):
    app = make_app(APP_ENV="production")

    @app.get("/boom")
    def boom():
        raise KeyError("internal-detail")

    response = app.test_client().get("/boom", headers={API_KEY_HEADER: key}, base_url=HTTPS)
    assert response.status_code == 500
    assert response.json == {"error": "internal_error", "message": ANY}
    assert "internal-detail" not in response.get_data(as_text=True)
    assert "Strict-Transport-Security" in response.headers


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "\t\n"},
        {"name": 5},
        {"name": None},
        {"name": ["a"]},
        {"name": dict(first="a")},
        {"title": "a"},
        {"name": "x" * (ITEM_NAME_LENGTH + 1)},
        ["name"],
        "name",
        None,
        0,
    ],
)
def test_bad_item_body_is_unprocessable(app, client, key, body):
    response = client.post(
        "/v1/items",
        data=json.dumps(body),
        content_type="application/json",
        headers={API_KEY_HEADER: key},
    )
    assert response.status_code == 422
    assert response.json == {"error": "invalid_body", "message": ANY}
    assert item_count(app) == 0


def test_malformed_json_is_a_bad_request(client, key):
    response = client.post(
        "/v1/items", data=b"\xff{", content_type="application/json", headers={API_KEY_HEADER: key}
    )
    assert response.status_code == 400
    assert response.json == {"error": "bad_request", "message": ANY}


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_resource_exhaustion_deeply_nested_json_is_refused_not_a_crash(client, key, logs, depth):
    body = "[" * depth + "]" * depth
    response = client.post(
        "/v1/items", data=body, content_type="application/json", headers={API_KEY_HEADER: key}
    )
    # Past the parser's recursion limit a 400; within it (Python 3.12 parses 1,000 levels)
    # a well-formed array that is not the object the route wants, a 422.
    assert (response.status_code, response.json["error"]) in {
        (400, "bad_request"),
        (422, "invalid_body"),
    }
    if depth == 100_000:
        assert response.status_code == 400
    assert "Traceback" not in logs.text


def test_resource_exhaustion_body_over_the_limit_is_refused(make_app, key):
    app = make_app(MAX_CONTENT_LENGTH="1024")
    client = app.test_client()
    headers = {API_KEY_HEADER: key}
    big = client.post("/v1/items", json={"name": "x" * 2048}, headers=headers)
    small = client.post("/v1/items", json={"name": "x"}, headers=headers)
    assert big.status_code == 413
    assert big.json == {"error": "request_entity_too_large", "message": ANY}
    assert small.status_code == 201
    assert item_count(app) == 1


def test_resource_exhaustion_streamed_body_over_the_limit_is_refused(make_app, key):
    """A chunked body has no Content-Length: it is cut at the limit, and still answered 413."""
    client = make_app(MAX_CONTENT_LENGTH="1024").test_client()

    def post_streamed(body: bytes):
        return client.post(
            "/v1/items",
            input_stream=io.BytesIO(body),
            content_type="application/json",
            headers={API_KEY_HEADER: key, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
        )

    big = post_streamed(json.dumps({"name": "x" * 2048}).encode())
    assert big.status_code == 413
    assert big.json == {"error": "request_entity_too_large", "message": ANY}
    assert post_streamed(b'{"name": "x"}').status_code == 201
    assert post_streamed(b'{"name": ').status_code == 400  # malformed, not too large


def test_every_error_code_is_snake_case():
    for _, _, codes in ERROR_RESPONSES.values():
        for code in codes:
            assert code.replace("_", "").isalpha() and code.islower(), code


def test_guessed_key_error_never_echoes_the_guess(client):
    guess = keys.generate_key()
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: guess})
    assert guess not in response.get_data(as_text=True)
    assert guess not in str(response.headers)
