"""Every error is one RFC 9457 problem document, and leaks nothing (errors.py)."""

import io
import json
from datetime import UTC, datetime

import pytest
from problems import problem
from sqlalchemy import func, select

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.errors import error_classes
from {{ cookiecutter.package_name }}.models import ITEM_NAME_LENGTH, Item

HTTPS = "https://localhost"


def documented(client, status):
    """The error codes /openapi.json promises for ``status``."""
    document = client.get("/openapi.json", base_url=HTTPS).json
    schema = document["components"]["responses"][f"Problem{status}"]["content"]
    return schema["application/problem+json"]["schema"]["allOf"][1]["properties"]["error"]["enum"]


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
    (dict(), "POST", "/v1/items", dict(data='{"name": 1}x', content_type=JSON), 400, "bad_request"),
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
    problem(response, status, code)
    assert key not in response.get_data(as_text=True)
    if status == 401:
        assert API_KEY_HEADER in response.headers["WWW-Authenticate"]
    else:
        assert "WWW-Authenticate" not in response.headers
    if status != 405:  # no documented operation answers 405
        assert code in documented(client, status)


def test_expired_key_error(app, client, issue_key):
    expired = issue_key(app, expires=datetime(2000, 1, 1, tzinfo=UTC))
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: expired})
    problem(response, 401, "expired_api_key")
    assert "WWW-Authenticate" in response.headers
    assert "expired_api_key" in documented(client, 401)


def test_insufficient_scope_error(app, client, issue_key):
    reader = issue_key(app, scopes=frozenset({"items:read"}))
    response = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
    document = problem(response, 403, "insufficient_scope")
    assert document["required_scopes"] == ["items:write"]
    assert "insufficient_scope" in documented(client, 403)


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
    problem(response, 500, "internal_error")
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
    problem(response, 500, "internal_error")
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
    document = problem(response, 422, "invalid_body")
    assert document["errors"]
    assert all(set(error) == {"loc", "msg", "type"} for error in document["errors"])
    assert item_count(app) == 0


def test_malformed_json_is_a_bad_request(client, key):
    response = client.post(
        "/v1/items", data=b"\xff{", content_type="application/json", headers={API_KEY_HEADER: key}
    )
    problem(response, 400, "bad_request")


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
    problem(big, 413, "request_entity_too_large")
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
    problem(big, 413, "request_entity_too_large")
    assert post_streamed(b'{"name": "x"}').status_code == 201
    assert post_streamed(b'{"name": ').status_code == 400  # malformed, not too large


def test_every_error_code_is_snake_case():
    for error in error_classes():
        assert error.code.replace("_", "").isalpha() and error.code.islower(), error.code


def test_guessed_key_error_never_echoes_the_guess(client):
    guess = keys.generate_key()
    response = client.get("/v1/whoami", headers={API_KEY_HEADER: guess})
    assert guess not in response.get_data(as_text=True)
    assert guess not in str(response.headers)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"name": "\\ud800"}', 400),  # a lone surrogate: no valid UTF-8 can hold it
        (b'{"name": "x\\udc00y"}', 400),
        (b'{"name": "\xff\xfe"}', 400),  # invalid UTF-8
        (b'{"name": "ok"} trailing', 400),
        (b'{"name": "ok"}{"name": "again"}', 400),
        (b'{"name": 1e999999}', 422),  # a number too large for any float: not a string
        (b'{"name": ' + b"9" * 5000 + b"}", 400),  # past the parser's number limit
        (b'{"name": "nul\\u0000byte"}', 422),  # PostgreSQL text cannot hold NUL
        (b'{"name": "line\\nbreak"}', 422),  # would forge a log line
        (b'{"name": "\\u001b[31mred"}', 422),  # a terminal escape
        (b'{"name": {"$gt": ""}}', 422),  # operator injection
        (b"[" * 300 + b"]" * 300, 400),
        (b'{"name": "x", "name": 5}', 422),  # the last duplicate wins, and is checked
    ],
    ids=lambda value: repr(value[:24]) if isinstance(value, bytes) else str(value),
)
def test_hostile_bodies_are_refused_and_store_nothing(app, client, key, logs, raw, status):
    response = client.post(
        "/v1/items", data=raw, content_type="application/json", headers={API_KEY_HEADER: key}
    )
    problem(response, status, "bad_request" if status == 400 else "invalid_body")
    assert item_count(app) == 0
    assert "Traceback" not in logs.text


def test_field_errors_name_the_field_and_the_rule_never_the_value(client, key):
    secret = keys.generate_key()  # as if a client pasted a key into the wrong field
    response = client.post("/v1/items", json={"name": secret * 10}, headers={API_KEY_HEADER: key})
    document = problem(response, 422, "invalid_body")
    assert document["errors"] == [
        {
            "loc": ["name"],
            "msg": f"String should have at most {ITEM_NAME_LENGTH} characters",
            "type": "string_too_long",
        }
    ]
    assert secret not in response.get_data(as_text=True)


def test_an_unauthenticated_body_is_not_even_read(client):
    """The key is checked before the body: an anonymous client learns nothing of the schema."""
    response = client.post("/v1/items", data=b"{", content_type="application/json")
    problem(response, 401, "missing_api_key")


def test_the_valid_body_reaches_the_view_as_a_typed_object(app, client, key):
    response = client.post("/v1/items", json={"name": "  padded  "}, headers={API_KEY_HEADER: key})
    assert response.status_code == 201
    assert response.json["name"] == "padded"
    assert set(response.json) == {"id", "name", "owner", "created_by", "created"}
