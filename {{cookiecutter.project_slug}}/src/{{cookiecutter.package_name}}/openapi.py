"""The OpenAPI 3.1 document served at /openapi.json, built from the app itself.

Nothing here names a route. The document walks ``app.url_map`` and reads what
the decorators left on each view: the scopes of ``require_api_key``, the models
of ``@body``, ``@query`` and ``@response`` (schemas.py), the first line of the
docstring. A route you add with those decorators is described, scopes and all,
without touching this file.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from .config import API_KEY_HEADER
from .errors import PROBLEM_JSON, error_classes, http_error_code, problem_type
from .security import PROBES

# Written as JSON strings (valid Python), so quotes and backslashes in a name stay data.
TITLE = {{ cookiecutter.project_name | tojson }}  # fmt: skip
VERSION = "{{ cookiecutter.version }}"
DESCRIPTION = {{ cookiecutter.description | tojson }}  # fmt: skip

SECURITY_SCHEME = "ApiKey"
# The errors each kind of route can answer, beyond those any route can.
KEYED = (401, 403{% if cookiecutter.use_rate_limiting %}, 429{% endif %})
WITH_BODY = (400, 413, 415, 422)
WITH_QUERY = (422,)
WITH_PATH = (404,)
# Werkzeug's errors, raised for any route of the kind above: named by their status.
WERKZEUG_ERRORS = (400, 404, 413, 415)
# What a path variable's converter accepts; any other converter takes a string.
CONVERTER_SCHEMAS = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
}
# <name>, <int:name>, <int(signed=True):name>
PATH_VARIABLE = re.compile(r"<(?:(?P<converter>[^<>:(]+)(?:\([^<>]*\))?:)?(?P<name>[^<>:]+)>")


def undocumented(view: Callable[..., Any]) -> Callable[..., Any]:
    """Leave a view out of the document: a file for people, not an API operation."""
    view.undocumented = True  # type: ignore[attr-defined]
    return view


def openapi_document(app: Flask) -> dict[str, Any]:
    """The document for ``app``, built once and kept."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = _build(app)
    return app.extensions["openapi"]


def _build(app: Flask) -> dict[str, Any]:
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        # Flask's static files are not API operations either.
        if rule.endpoint != "static"
        and not hasattr(app.view_functions[rule.endpoint], "undocumented")
    ]
    views = {rule.endpoint: app.view_functions[rule.endpoint] for rule in rules}
    # Operations are named after their views (list_items), by blueprint where two clash.
    names = Counter(endpoint.rpartition(".")[2] for endpoint in views)
    refs, schemas = _model_schemas(views.values())
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(rules, key=lambda rule: rule.rule):
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})  # type: ignore[operator]
        for method in methods:
            name = rule.endpoint.rpartition(".")[2]
            if names[name] > 1:
                name = rule.endpoint.replace(".", "_")
            if len(methods) > 1:
                name += f"_{method.lower()}"
            operation = _operation(rule, views[rule.endpoint], refs, name)
            paths.setdefault(_path(rule), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
            "responses": {
                _response_name(status): _error_response(status)
                for status in sorted(_referenced_statuses(paths))
            },
            "schemas": {**schemas, "Problem": PROBLEM_SCHEMA},
        },
    }


def _operation(rule: Rule, view, refs, name: str) -> dict[str, Any]:
    """One operation, from what the view's decorators and docstring say."""
    summary, _, description = (inspect.getdoc(view) or rule.endpoint).partition("\n")
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": summary.strip(),
        "tags": [rule.endpoint.partition(".")[0]],
    }
    if description.strip():
        operation["description"] = description.strip()
    # Any route may fail (500) or find the database down (503); all but the probes
    # refuse plain HTTP (403).
    errors = [500, 503] if rule.rule in PROBES else [403, 500, 503]
    parameters = [
        {
            "name": variable["name"],
            "in": "path",
            "required": True,
            "schema": CONVERTER_SCHEMAS.get(variable["converter"], {"type": "string"}),
        }
        for variable in PATH_VARIABLE.finditer(rule.rule)
    ]
    if parameters:
        errors += WITH_PATH
    if hasattr(view, "query_model"):
        parameters += _query_parameters(view.query_model)
        errors += WITH_QUERY
    if parameters:
        operation["parameters"] = parameters
    if hasattr(view, "required_scopes"):
        # OpenAPI 3.1 lets an apiKey requirement list scopes: those require_api_key checks.
        operation["security"] = [{SECURITY_SCHEME: sorted(view.required_scopes)}]
        errors += KEYED
    if hasattr(view, "body_model"):
        content = {"application/json": {"schema": refs[view.body_model, "validation"]}}
        operation["requestBody"] = {"required": True, "content": content}
        errors += WITH_BODY
    # Errors the view's decorators say it raises itself (@response(errors=...), ...).
    errors += getattr(view, "error_statuses", ())
    status = getattr(view, "response_status", 200)
    answer: dict[str, Any] = {"description": summary.strip()}
    if getattr(view, "response_model", None) is not None:
        answer["content"] = {
            "application/json": {"schema": refs[view.response_model, "serialization"]}
        }
    operation["responses"] = {
        str(status): answer,
        **{
            str(error): {"$ref": f"#/components/responses/{_response_name(error)}"}
            for error in sorted(set(errors))
        },
    }
    return operation


def _path(rule: Rule) -> str:
    """Flask's ``/items/<int:item_id>`` written the OpenAPI way, ``/items/{item_id}``."""
    return PATH_VARIABLE.sub(r"{\g<name>}", rule.rule)


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "schema": {k: v for k, v in field.items() if k != "title"},
        }
        for name, field in schema["properties"].items()
    ]


def _model_schemas(views) -> tuple[dict[Any, dict[str, str]], dict[str, Any]]:
    """JSON Schemas of every model the views use, as components, and a $ref to each."""
    models = set()
    for view in views:
        if hasattr(view, "body_model"):
            models.add((view.body_model, "validation"))
        if getattr(view, "response_model", None) is not None:
            models.add((view.response_model, "serialization"))
    refs, definitions = models_json_schema(
        sorted(models, key=lambda pair: (pair[0].__name__, pair[1])),
        ref_template="#/components/schemas/{model}",
    )
    return refs, definitions.get("$defs", {})


def _referenced_statuses(paths: dict[str, dict[str, Any]]) -> set[int]:
    """The error statuses some operation refers to: each gets one shared response."""
    return {
        int(status)
        for operations in paths.values()
        for operation in operations.values()
        for status, answer in operation["responses"].items()
        if "$ref" in answer
    }


def _response_name(status: int) -> str:
    return f"Problem{status}"


def _error_response(status: int) -> dict[str, Any]:
    """Every error this API can answer with ``status``: its codes and their types."""
    ours = [error for error in error_classes() if error.status == status]
    codes = {error.code for error in ours}
    if status in WERKZEUG_ERRORS:
        codes.add(http_error_code(status))
    codes = sorted(codes)
    types = {error.type or problem_type(error.code) for error in ours}
    if status in WERKZEUG_ERRORS:
        types.add(problem_type(http_error_code(status)))
    schema = {
        "allOf": [
            {"$ref": "#/components/schemas/Problem"},
            {
                "properties": {
                    "status": {"const": status},
                    "error": {"enum": codes},
                    "type": {"enum": sorted(types)},
                }
            },
        ]
    }
    return {
        "description": ", ".join(codes),
        "content": {PROBLEM_JSON: {"schema": schema}},
    }


# RFC 9457 problem details, with the members clients of earlier versions read.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "error", "message"],
    "properties": {
        "type": {"type": "string", "description": "The problem type: see /problems/{code}"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "error": {"type": "string", "description": "A short snake_case code"},
        "message": {"type": "string", "description": "The same text as detail"},
        "required_scopes": {"type": "array", "items": {"type": "string"}},
        "errors": {
            "type": "array",
            "description": "Each field that did not fit, and why",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
