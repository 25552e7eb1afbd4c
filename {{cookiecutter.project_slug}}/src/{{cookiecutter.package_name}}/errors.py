"""Every error the API can answer, and the handlers that turn them into JSON.

Clients get ``{"error": "<code>", "message": "<text>"}`` for everything: our
own refusals, Werkzeug's HTTP errors (404, 405, 413, ...) and crashes, whose
details stay in the log (no traceback or internals leak to the client).
"""

from __future__ import annotations

import logging
import re

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from .config import API_KEY_HEADER

log = logging.getLogger(__name__)

# Sent with every 401 so clients learn which header carries the key (RFC 9110).
REALM = "{{ cookiecutter.project_slug }}"
WWW_AUTHENTICATE = f'ApiKey realm="{REALM}", header="{API_KEY_HEADER}"'


class APIError(Exception):
    """An error answered as JSON. Subclasses fix the status, code and default message."""

    status = 500
    code = "internal_error"
    message = "The server failed to handle the request."

    def __init__(self, message: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}


class MissingAPIKey(APIError):
    status, code = 401, "missing_api_key"
    message = f"Send your API key in the {API_KEY_HEADER} header."


class InvalidAPIKey(APIError):
    status, code = 401, "invalid_api_key"
    message = "The API key is not valid."


class ExpiredAPIKey(APIError):
    status, code = 401, "expired_api_key"
    message = "The API key has expired."


class HTTPSRequired(APIError):
    status, code = 403, "https_required"
    message = "Use HTTPS. If you sent an API key over plain HTTP, rotate it."


class IPNotAllowed(APIError):
    status, code = 403, "ip_not_allowed"
    message = "Requests from this IP address are not allowed for this API key."


class InsufficientScope(APIError):
    status, code = 403, "insufficient_scope"
    message = "The API key lacks the scope this route needs."


class InvalidBody(APIError):
    status, code = 422, "invalid_body"
    message = "The request body is not valid."


class InvalidParameter(APIError):
    status, code = 422, "invalid_parameter"
    message = "A query parameter is not valid."


class ResourceNotFound(APIError):
    status, code = 404, "not_found"
    message = "No such resource."


class NotReady(APIError):
    status, code = 503, "not_ready"
    message = "A service the API needs is unavailable."


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    """The one shape of every error the API sends; a 401 says how to authenticate."""
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def init_app(app: Flask) -> None:
    """Answer every error, expected or not, in JSON."""
    app.register_error_handler(APIError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unhandled)


def _api_error(error: APIError):
    return error_response(error.status, error.code, error.message, error.headers)


def http_error_code(status: int) -> str:
    """The code of an HTTP error: 405 "Method Not Allowed" -> "method_not_allowed"."""
    name = HTTP_STATUS_CODES.get(status, "error")
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _http_error(error: HTTPException):
    # Keeps headers such as Allow.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = error.description or error.name
    status = error.code or 500
    return error_response(status, http_error_code(status), message, headers)


def _unhandled(error: Exception):
    log.exception("unhandled exception")
    return error_response(500, APIError.code, APIError.message)
