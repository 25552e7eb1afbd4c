"""The OpenAPI 3.1 document served at /openapi.json, written by hand next to the routes.

Keep it in step with api.py when you add a route: the tests check that every
route is described and that each answer matches its schema.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .config import API_KEY_HEADER
from .errors import (
    APIError,
    ExpiredAPIKey,
    HTTPSRequired,
    InsufficientScope,
    InvalidAPIKey,
    InvalidBody,
    InvalidParameter,
    IPNotAllowed,
    MissingAPIKey,
    NotReady,
    http_error_code,
)
from .models import ITEM_NAME_LENGTH
{%- if cookiecutter.use_rate_limiting %}
from .ratelimit import RateLimited, RateLimitUnavailable
{%- endif %}

# Written as JSON strings (valid Python), so quotes and backslashes in a name stay data.
TITLE = {{ cookiecutter.project_name | tojson }}  # fmt: skip
VERSION = "{{ cookiecutter.version }}"
DESCRIPTION = {{ cookiecutter.description | tojson }}  # fmt: skip


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *codes: str) -> dict[str, Any]:
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return {"description": description, "content": _json(schema)}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
        for status in statuses
    }


# status -> (component name, description, error codes)
ERROR_RESPONSES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: (
        "BadRequest",
        "The request could not be read (for example malformed JSON).",
        (http_error_code(400),),
    ),
    401: (
        "Unauthorized",
        "No key, or a key that is unknown, revoked, malformed or expired.",
        (MissingAPIKey.code, InvalidAPIKey.code, ExpiredAPIKey.code),
    ),
    403: (
        "Forbidden",
        "Plain HTTP where HTTPS is required, an IP outside the allowlist, or a missing scope.",
        (HTTPSRequired.code, IPNotAllowed.code, InsufficientScope.code),
    ),
    404: ("NotFound", "No such resource.", (http_error_code(404),)),
    413: (
        "PayloadTooLarge",
        "The body is larger than MAX_CONTENT_LENGTH.",
        (http_error_code(413),),
    ),
    415: (
        "UnsupportedMediaType",
        "The body is not JSON.",
        (http_error_code(415),),
    ),
    422: (
        "UnprocessableContent",
        "The JSON body does not have the expected fields, or a query parameter is invalid.",
        (InvalidBody.code, InvalidParameter.code),
    ),
{%- if cookiecutter.use_rate_limiting %}
    429: (
        "TooManyRequests",
        "The key's rate limit, or this client's failed-authentication limit, is spent; "
        "see Retry-After.",
        (RateLimited.code,),
    ),
{%- endif %}
    500: ("InternalError", "The server failed; details are in its log.", (APIError.code,)),
    503: (
        "ServiceUnavailable",
{%- if cookiecutter.use_rate_limiting %}
        "A service the API needs cannot be reached; see Retry-After where given.",
        (NotReady.code, RateLimitUnavailable.code),
{%- else %}
        "A service the API needs cannot be reached.",
        (NotReady.code,),
{%- endif %}
    ),
}

{% if cookiecutter.use_rate_limiting -%}
PROTECTED = (401, 403, 429, 500, 503)
{%- else -%}
PROTECTED = (401, 403, 500)
{%- endif %}
SECURED = [{"ApiKey": []}]


@cache
def openapi_document() -> dict[str, Any]:
    """Build the document once per process."""
    item = _ref("Item")
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "paths": {
            "/health": {
                "get": {
                    "summary": "Liveness probe",
                    "operationId": "health",
                    "responses": {"200": {"description": "Up", "content": _json(_ref("Health"))}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness probe: the services the API needs answer",
                    "operationId": "ready",
                    "responses": {
                        "200": {"description": "Ready", "content": _json(_ref("Ready"))},
                        **_errors(503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}, **_errors(403)},
                }
            },
            "/v1/secure-data": {
                "get": {
                    "summary": "Data for any valid key",
                    "operationId": "secureData",
                    "security": SECURED,
                    "responses": {
                        "200": {"description": "The data", "content": _json(_ref("SecureData"))},
                        **_errors(*PROTECTED),
                    },
                }
            },
            "/v1/whoami": {
                "get": {
                    "summary": "The key used for this request",
                    "operationId": "whoami",
                    "security": SECURED,
                    "responses": {
                        "200": {
                            "description": "The key's public record",
                            "content": _json(_ref("WhoAmI")),
                        },
                        **_errors(*PROTECTED),
                    },
                }
            },
            "/v1/items": {
                "get": {
                    "summary": "List the caller's owner's items, newest first (scope items:read)",
                    "operationId": "listItems",
                    "security": SECURED,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "A page of items", "content": _json(_ref("Page"))},
                        **_errors(*PROTECTED, 422),
                    },
                },
                "post": {
                    "summary": "Create an item (scope items:write)",
                    "operationId": "createItem",
                    "security": SECURED,
                    "requestBody": {"required": True, "content": _json(_ref("NewItem"))},
                    "responses": {
                        "201": {"description": "Created", "content": _json(item)},
                        **_errors(400, *PROTECTED, 413, 415, 422),
                    },
                },
            },
            "/v1/items/{item_id}": {
                "get": {
                    "summary": "One of the caller's owner's items (scope items:read)",
                    "operationId": "getItem",
                    "security": SECURED,
                    "parameters": [
                        {
                            "name": "item_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The item", "content": _json(item)},
                        **_errors(*PROTECTED, 404),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
            "responses": {
                name: _error(description, *codes)
                for name, description, codes in ERROR_RESPONSES.values()
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "Ready": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "ready"}},
                },
                "Page": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": item},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                },
                "SecureData": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "object"}},
                },
                "WhoAmI": {
                    "type": "object",
                    "required": ["name", "owner", "scopes", "expires", "fingerprint"],
                    "properties": {
                        "name": {"type": "string"},
                        "owner": {"type": "string"},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "expires": {"type": ["string", "null"], "format": "date-time"},
                        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
                    },
                },
                "NewItem": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": ITEM_NAME_LENGTH}
                    },
                },
                "Item": {
                    "type": "object",
                    "required": ["id", "name", "owner", "created_by", "created"],
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "owner": {"type": "string"},
                        "created_by": {"type": "string"},
                        "created": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    }
