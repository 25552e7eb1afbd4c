"""Every error the API can answer, as RFC 9457 problem details.

Clients get one shape for everything: our own refusals, Werkzeug's HTTP errors
(404, 405, 413, ...) and crashes, whose details stay in the log (no traceback
or internals leak to the client)::

    HTTP/1.1 403 FORBIDDEN
    Content-Type: application/problem+json

    {"type": "/problems/insufficient_scope", "title": "Insufficient scope",
     "status": 403, "detail": "The API key lacks the scope items:write.",
     "error": "insufficient_scope", "message": "The API key lacks the scope items:write.",
     "required_scopes": ["items:write"]}

``error`` and ``message`` are the fields clients of earlier versions read; each
``type`` is a stable URI per error code that answers, at ``/problems/<code>``,
what the problem means.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from .config import API_KEY_HEADER

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Sent with every 401 so clients learn which header carries the key (RFC 9110).
REALM = "{{ cookiecutter.project_slug }}"
WWW_AUTHENTICATE = f'ApiKey realm="{REALM}", header="{API_KEY_HEADER}"'


class APIError(Exception):
    """An error answered as a problem document. Subclasses fix the status, code, title
    and default message; ``extra`` holds members such as ``required_scopes``."""

    status = 500
    code = "internal_error"
    title: str | None = None  # the HTTP reason phrase unless a subclass names its own
    message = "The server failed to handle the request."
    # A registered type (RFC 9457 section 4.2) may replace ours: see RateLimited.
    type: str | None = None

    def __init__(
        self,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}
        self.extra = extra


class MissingAPIKey(APIError):
    status, code, title = 401, "missing_api_key", "Missing API key"
    message = f"Send your API key in the {API_KEY_HEADER} header."


class InvalidAPIKey(APIError):
    status, code, title = 401, "invalid_api_key", "Invalid API key"
    message = "The API key is not valid."


class ExpiredAPIKey(APIError):
    status, code, title = 401, "expired_api_key", "Expired API key"
    message = "The API key has expired."


class HTTPSRequired(APIError):
    status, code, title = 403, "https_required", "HTTPS required"
    message = "Use HTTPS. If you sent an API key over plain HTTP, rotate it."


class IPNotAllowed(APIError):
    status, code, title = 403, "ip_not_allowed", "IP address not allowed"
    message = "Requests from this IP address are not allowed for this API key."


class InsufficientScope(APIError):
    status, code, title = 403, "insufficient_scope", "Insufficient scope"
    message = "The API key lacks the scope this route needs."


class InvalidBody(APIError):
    status, code, title = 422, "invalid_body", "Invalid body"
    message = "The request body is not valid."


class InvalidParameter(APIError):
    status, code, title = 422, "invalid_parameter", "Invalid parameter"
    message = "A query parameter is not valid."


class ResourceNotFound(APIError):
    status, code = 404, "not_found"  # the code, and so the title, of Werkzeug's 404
    message = "No such resource."


class NotReady(APIError):
    status, code = 503, "not_ready"
    message = "A service the API needs is unavailable."


def problem_type(code: str) -> str:
    """The URI of an error code's problem type: relative, so that it resolves against
    the API's own address, which the API cannot learn but from the Host header."""
    return f"/problems/{code}"


def error_response(error: APIError) -> Response:
    """The one shape of every error the API sends; a 401 says how to authenticate."""
    document = {
        "type": error.type or problem_type(error.code),
        "title": error.title or HTTP_STATUS_CODES[error.status],
        "status": error.status,
        "detail": error.message,
        "error": error.code,
        "message": error.message,
        **error.extra,
    }
    response = Response(json.dumps(document), error.status, mimetype=PROBLEM_JSON)
    response.headers.update(error.headers)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def http_error_code(status: int) -> str:
    """The code of an HTTP error: 405 "Method Not Allowed" -> "method_not_allowed"."""
    name = HTTP_STATUS_CODES.get(status, "error")
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def error_classes() -> list[type[APIError]]:
    """Every APIError subclass the app has imported, by status then code: the errors
    /openapi.json and /problems document."""
    found, pending = [], [APIError]
    while pending:
        error = pending.pop()
        found.append(error)
        pending.extend(error.__subclasses__())
    return sorted(found, key=lambda error: (error.status, error.code))


def from_http_exception(error: HTTPException) -> APIError:
    """Werkzeug's HTTP error (404, 405, 413, ...) as one of ours, its headers kept."""
    status = error.code or 500
    problem = APIError(
        error.description or error.name,
        {k: v for k, v in error.get_headers() if k.lower() != "content-type"},  # Allow, ...
    )
    problem.status, problem.code, problem.title = status, http_error_code(status), error.name
    return problem


def describe_problem(code: str) -> dict[str, object] | None:
    """The problem type of ``code`` (what ``/problems/<code>`` answers), or None."""
    for error in error_classes():
        if error.code == code and error.type is None:
            title = error.title or HTTP_STATUS_CODES[error.status]
            return {"type": problem_type(code), "title": title, "status": error.status}
    for status, name in HTTP_STATUS_CODES.items():
        if status >= 400 and http_error_code(status) == code:
            return {"type": problem_type(code), "title": name, "status": status}
    return None


def init_app(app: Flask) -> None:
    """Answer every error, expected or not, as a problem document."""
    app.register_error_handler(APIError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unhandled)


def _http_error(error: HTTPException) -> Response:
    return error_response(from_http_exception(error))


def _unhandled(error: Exception) -> Response:
    log.exception("unhandled exception")
    return error_response(APIError())
