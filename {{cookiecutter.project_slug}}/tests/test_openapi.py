"""/openapi.json describes every route, its errors and the key header (openapi.py)."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }}.api import MAX_PAGE_SIZE
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

IGNORED_METHODS = frozenset(["HEAD", "OPTIONS"])
{%- if cookiecutter.use_docs_page %}
# Pages and files for people, not API operations: static files, the /docs page and its assets.
UNDOCUMENTED_ENDPOINTS = frozenset(["static", "docs.page", "docs.swagger_ui"])
{%- else %}
# Files for people, not API operations.
UNDOCUMENTED_ENDPOINTS = frozenset(["static"])
{%- endif %}


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
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS:
            continue
        for method in rule.methods - IGNORED_METHODS:
            served.add((openapi_path(rule.rule), method))
    documented = set((path, method) for path, method, _ in operations(document))
    assert served == documented


def test_key_header_is_the_security_scheme(document):
    schemes = document["components"]["securitySchemes"].values()
    assert [(s["type"], s["in"], s["name"]) for s in schemes] == [
        ("apiKey", "header", API_KEY_HEADER)
    ]


def test_secured_operations_are_exactly_the_guarded_views(app, document):
    endpoint_of = {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods - IGNORED_METHODS:
            endpoint_of[(openapi_path(rule.rule), method)] = rule.endpoint
    scheme_names = set(document["components"]["securitySchemes"])
    for path, method, operation in operations(document):
        view = app.view_functions[endpoint_of[(path, method)]]
        guarded = hasattr(view, "required_scopes")
        secured = bool(operation.get("security"))
        assert secured == guarded, (path, method)
        if secured:
            for requirement in operation["security"]:
                assert set(requirement) <= scheme_names
            assert "401" in operation["responses"], (path, method)
            assert "403" in operation["responses"], (path, method)
            for scope in view.required_scopes:
                assert scope in operation["summary"], (path, method)


def test_every_reference_resolves(document):
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            assert resolve(document, response)["description"], (path, method, status)


def call(client, path, method, key, item_id):
    headers = {API_KEY_HEADER: key}
    path = path.replace("{item_id}", str(item_id))
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
            response = call(client, path, method, used, item_id)
            where = (path, method, response.status_code)
            assert str(response.status_code) in operation["responses"], where
            documented = resolve(document, operation["responses"][str(response.status_code)])
            if "content" in documented:
                schema = documented["content"]["application/json"]["schema"]
                check(document, schema, response.json, where)
                checked += 1
    assert checked >= 20


def test_documented_errors_name_the_codes_the_api_sends(client, document):
    operation = document["paths"]["/v1/whoami"]["get"]
    unauthorized = resolve(document, operation["responses"]["401"])
    error_schema = unauthorized["content"]["application/json"]["schema"]
    codes = error_schema["allOf"][1]["properties"]["error"]["enum"]
    response = client.get("/v1/whoami")
    assert response.json["error"] in codes


def test_the_readiness_probe_is_documented_with_its_503(document):
    operation = document["paths"]["/ready"]["get"]
    assert "security" not in operation
    assert set(operation["responses"]) == {"200", "503"}
    unavailable = resolve(document, operation["responses"]["503"])
    codes = unavailable["content"]["application/json"]["schema"]["allOf"][1]["properties"]
    assert "not_ready" in codes["error"]["enum"]


def test_the_list_parameters_are_documented_with_their_bounds(client, key, document):
    operation = document["paths"]["/v1/items"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {"limit", "cursor"}
    assert all(parameter["in"] == "query" for parameter in parameters.values())
    limit = parameters["limit"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, MAX_PAGE_SIZE)
    assert parameters["cursor"]["schema"]["type"] == "string"
    # The answer to a limit out of bounds is one the document lists.
    response = client.get("/v1/items?limit=0", headers={API_KEY_HEADER: key})
    refused = resolve(document, operation["responses"][str(response.status_code)])
    codes = refused["content"]["application/json"]["schema"]["allOf"][1]["properties"]
    assert response.json["error"] in codes["error"]["enum"]
    page = resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(page["required"]) == {"items", "next_cursor"}


def test_one_item_is_documented_with_its_path_parameter_and_404(document):
    operation = document["paths"]["/v1/items/{item_id}"]["get"]
    (parameter,) = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("item_id", "path", True)
    assert parameter["schema"]["type"] == "integer"
    assert {"200", "404"} <= set(operation["responses"])
    assert operation["security"]
    assert "items:read" in operation["summary"]
