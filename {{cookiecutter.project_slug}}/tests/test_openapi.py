"""/openapi.json is built from the code: every route, its scopes, bodies and errors (openapi.py)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from flask import Blueprint, g
from pydantic import Field

from {{ cookiecutter.package_name }}.auth import require_api_key
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.errors import error_classes
from {{ cookiecutter.package_name }}.schemas import (
    MAX_PAGE_SIZE,
    Answer,
    Body,
    body,
    response,
)

IGNORED_METHODS = frozenset(["HEAD", "OPTIONS"])
{%- if cookiecutter.use_docs_page %}
# Files for people, not API operations: static files and Swagger UI's own files.
UNDOCUMENTED_ENDPOINTS = frozenset(["static", "docs.swagger_ui"])
{%- else %}
# Files for people, not API operations.
UNDOCUMENTED_ENDPOINTS = frozenset(["static"])
{%- endif %}
PROBLEM_JSON = "application/problem+json"


def openapi_path(rule):
    """Flask's ``/items/<int:id>`` written the OpenAPI way, ``/items/{id}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def resolve(document, node):
    """Follow local ``$ref`` pointers such as ``#/components/schemas/Item``."""
    while "$ref" in node:
        parts = node["$ref"].removeprefix("#/").split("/")
        node = document
        for part in parts:
            node = node[part]
    return node


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def served(app):
    """(path, method) -> view, for every route the app serves."""
    views = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint not in UNDOCUMENTED_ENDPOINTS:
            for method in rule.methods - IGNORED_METHODS:
                views[(openapi_path(rule.rule), method)] = app.view_functions[rule.endpoint]
    return views


def error_codes(document, operation, status):
    problem = resolve(document, operation["responses"][str(status)])
    schema = problem["content"][PROBLEM_JSON]["schema"]
    return schema["allOf"][1]["properties"]["error"]["enum"]


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def test_is_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    assert document["info"]["version"]


def test_every_route_is_documented_and_nothing_else(app, document):
    documented = set((path, method) for path, method, _ in operations(document))
    assert set(served(app)) == documented


def test_key_header_is_the_security_scheme(document):
    schemes = document["components"]["securitySchemes"].values()
    assert [(s["type"], s["in"], s["name"]) for s in schemes] == [
        ("apiKey", "header", API_KEY_HEADER)
    ]


def test_each_protected_operation_lists_exactly_the_scopes_of_its_decorator(app, document):
    views = served(app)
    protected = 0
    for path, method, operation in operations(document):
        view = views[(path, method)]
        if hasattr(view, "required_scopes"):
            assert operation["security"] == [{"ApiKey": sorted(view.required_scopes)}]
            assert {"401", "403"} <= set(operation["responses"]), (path, method)
            protected += 1
        else:
            assert "security" not in operation, (path, method)
    assert protected >= 5
    items = document["paths"]["/v1/items"]
    assert items["get"]["security"] == [{"ApiKey": ["items:read"]}]
    assert items["post"]["security"] == [{"ApiKey": ["items:write"]}]
    assert document["paths"]["/v1/whoami"]["get"]["security"] == [{"ApiKey": []}]


def test_a_route_added_with_the_decorators_documents_itself(make_app):
    """What the README's "Add your own protected route" promises: no other file to edit."""

    class NewReport(Body):
        title: str = Field(min_length=1, max_length=80)

    class Report(Answer):
        title: str
        requested_by: str

    reports = Blueprint("reports", __name__, url_prefix="/v1")

    @reports.post("/reports")
    @require_api_key("reports:write", "reports:read")
    @body(NewReport)
    @response(Report, 201)
    def create_report(body: NewReport):
        """Start a report.

        It is ready when it is ready.
        """
        return {"title": body.title, "requested_by": g.api_key.name}

    app = make_app()
    app.register_blueprint(reports)
    document = app.test_client().get("/openapi.json").json
    operation = document["paths"]["/v1/reports"]["post"]
    assert operation["security"] == [{"ApiKey": ["reports:read", "reports:write"]}]
    assert (operation["summary"], operation["description"]) == (
        "Start a report.",
        "It is ready when it is ready.",
    )
    request_schema = resolve(document, operation["requestBody"]["content"]["application/json"])
    new_report = resolve(document, request_schema["schema"])
    assert new_report["properties"]["title"]["maxLength"] == 80
    assert new_report["additionalProperties"] is False
    answer = resolve(document, operation["responses"]["201"]["content"]["application/json"])
    assert set(resolve(document, answer["schema"])["required"]) == {"title", "requested_by"}
    assert {"400", "401", "403", "413", "415", "422", "500"} <= set(operation["responses"])
    assert "insufficient_scope" in error_codes(document, operation, 403)


def test_every_reference_resolves(document):
    for path, method, operation in operations(document):
        for status, answer in operation["responses"].items():
            assert resolve(document, answer)["description"], (path, method, status)
        if "requestBody" in operation:
            schema = resolve(document, operation["requestBody"]["content"]["application/json"])
            schema = resolve(document, schema["schema"])
            # An object, or an array of them.
            assert resolve(document, schema.get("items", schema))["properties"], (path, method)


def test_every_error_code_has_a_documented_type_that_answers(client, document):
    """Each problem ``type`` is a stable URI, listed in the document, and it resolves."""
    listed = set()
    for answer in document["components"]["responses"].values():
        schema = answer["content"][PROBLEM_JSON]["schema"]
        listed.update(schema["allOf"][1]["properties"]["type"]["enum"])
    for error in error_classes():
        if error.type is not None:  # a registered type, such as quota-exceeded
            assert error.type in listed
            continue
        assert f"/problems/{error.code}" in listed, error.code
        described = client.get(f"/problems/{error.code}").json
        assert (described["status"], described["type"]) == (error.status, f"/problems/{error.code}")
    assert client.get("/problems/method_not_allowed").json["status"] == 405
    unknown = client.get("/problems/no_such_thing")
    assert (unknown.status_code, unknown.json["error"]) == (404, "not_found")


def call(client, path, method, key, item_id):
    headers = {API_KEY_HEADER: key}
    path = path.replace("{item_id}", str(item_id)).replace("{code}", "invalid_api_key")
    if method == "POST":
        return client.post(path, json={"name": "documented"}, headers=headers)
    return client.open(path, method=method, headers=headers)


def check(document, schema, value, where):
    """A small part of JSON Schema: required fields, enums and consts, through allOf."""
    schema = resolve(document, schema)
    for part in schema.get("allOf", []):
        check(document, part, value, where)
    for field in schema.get("required", []):
        assert field in value, (where, field)
    for field, rule in schema.get("properties", dict()).items():
        rule = resolve(document, rule)
        if field in value and "enum" in rule:
            assert value[field] in rule["enum"], (where, field)
        if field in value and "const" in rule:
            assert value[field] == rule["const"], (where, field)
        if field in value and "pattern" in rule:
            assert re.fullmatch(rule["pattern"], value[field]), (where, field)


def test_answers_match_their_documented_schemas(app, client, key, issue_key, document):
    reader = issue_key(app, scopes=frozenset(["items:read"]))
    expiring = issue_key(app, expires=datetime.now(UTC) + timedelta(days=1))
    # An item of the API_KEYS key's owner: the other keys belong to another owner (404).
    item_id = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: key}).json["id"]
    checked = 0
    for path, method, operation in operations(document):
        for used in (key, reader, expiring, "wrong", ""):
            answer = call(client, path, method, used, item_id)
            where = (path, method, answer.status_code)
            assert str(answer.status_code) in operation["responses"], where
            documented = resolve(document, operation["responses"][str(answer.status_code)])
            for media_type, content in documented.get("content", {}).items():
                assert answer.mimetype == media_type, where
                check(document, content["schema"], answer.json, where)
                checked += 1
    assert checked >= 20


def test_documented_errors_name_the_codes_the_api_sends(client, document):
    operation = document["paths"]["/v1/whoami"]["get"]
    answer = client.get("/v1/whoami")
    assert answer.json["error"] in error_codes(document, operation, 401)


def test_the_readiness_probe_is_documented_with_its_503(document):
    operation = document["paths"]["/ready"]["get"]
    assert "security" not in operation
    assert set(operation["responses"]) == {"200", "500", "503"}
    assert "not_ready" in error_codes(document, operation, 503)


def test_the_list_parameters_are_documented_with_their_bounds(client, key, document):
    operation = document["paths"]["/v1/items"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {"limit", "cursor"}
    assert all(parameter["in"] == "query" for parameter in parameters.values())
    limit = parameters["limit"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, MAX_PAGE_SIZE)
    assert "string" in str(parameters["cursor"]["schema"])
    # The answer to a limit out of bounds is one the document lists.
    answer = client.get("/v1/items?limit=0", headers={API_KEY_HEADER: key})
    assert answer.json["error"] in error_codes(document, operation, answer.status_code)
    page = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(resolve(document, page)["required"]) == {"items", "next_cursor"}


def test_one_item_is_documented_with_its_path_parameter_and_404(document):
    operation = document["paths"]["/v1/items/{item_id}"]["get"]
    (parameter,) = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("item_id", "path", True)
    assert parameter["schema"]["type"] == "integer"
    assert {"200", "404"} <= set(operation["responses"])
    assert operation["security"] == [{"ApiKey": ["items:read"]}]


def test_operations_are_named_after_their_views_and_unique(document):
    names = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(names) == len(set(names))
    assert {"whoami", "list_items", "create_item", "get_item"} <= set(names)
