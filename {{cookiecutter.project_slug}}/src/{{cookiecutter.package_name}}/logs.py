"""Logging: setup, request ids, and one access line per request.

Text lines in development, JSON lines (python-json-logger) in production.
Whatever the format, a log line is one line: control characters that came
from a request are escaped (log injection), and no line ever holds a raw key.
"""

from __future__ import annotations

import logging
import logging.config
import re
import time
import uuid

from flask import Flask, g, has_request_context, request
from werkzeug.wrappers import Response

from . import auth
from .keys import fingerprint, redact_keys

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is kept only when short and plain (log injection, log flooding).
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# C0/C1 controls and the Unicode marks that reorder or break lines on a terminal.
_UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
PACKAGE_LOGGER = __name__.rpartition(".")[0]

access_log = logging.getLogger(f"{PACKAGE_LOGGER}.access")


def escape(text: str) -> str:
    """Make ``text`` safe to print on one log line: a line feed becomes ``\\x0a``."""
    return _UNSAFE_CHARACTERS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class RequestIdFilter(logging.Filter):
    """Stamp each record with the current request id, or ``-`` outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class DevServerAccessFilter(logging.Filter):
    """Drop the development server's own request lines: they repeat ours and print
    query strings, where a misplaced key could sit (credential leak)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return '"%s" %s %s' not in str(record.msg)


class TextFormatter(logging.Formatter):
    """Plain text for people, with request-borne control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape(super().formatMessage(record))

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        # A traceback keeps its line breaks, but nothing else from a request gets through.
        lines = super().formatException(ei).split("\n")
        return "\n".join(escape(line) for line in lines)


class RedactKeysFilter(logging.Filter):
    """Put a fingerprint in place of any key in a record of a logger the app does not
    write itself: gunicorn quotes a request line or header it cannot parse (credential leak)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_keys(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_KEYS = RedactKeysFilter()


def configure_logging(log_format: str, level: str) -> None:
    """Send the app's logs to stderr, one line per record, in the chosen format."""
    formatter = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,  # ISO 8601, UTC
        }
        if log_format == "json"
        else {
            "()": TextFormatter,
            "fmt": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s",
        }
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {
                "request_id": {"()": RequestIdFilter},
                "dev_server_access": {"()": DevServerAccessFilter},
            },
            "formatters": {"default": formatter},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                    "formatter": "default",
                    "filters": ["request_id"],
                }
            },
            "loggers": {
                PACKAGE_LOGGER: {"handlers": ["stderr"], "level": level, "propagate": False},
                "werkzeug": {"level": "INFO", "filters": ["dev_server_access"]},
            },
        }
    )


def init_app(app: Flask) -> None:
    """Configure logging and log every request once, with its request id."""
    configure_logging(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    logging.getLogger("gunicorn.error").addFilter(_REDACT_KEYS)
    app.before_request(_start_request)
    app.after_request(_finish_request)


def _start_request() -> None:
    g.started = time.perf_counter()
    candidate = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = candidate if _SAFE_REQUEST_ID.fullmatch(candidate) else uuid.uuid4().hex


def _finish_request(response: Response) -> Response:
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers[REQUEST_ID_HEADER] = request_id
    duration_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    api_key = g.get("api_key")
    who = api_key.name if api_key else _presented_fingerprint()
    # The path, never the query string, and no key pasted into it (credential leak).
    path = redact_keys(request.path)
    access_log.info(
        "%s %s %s %.1fms ip=%s key=%s",
        request.method,
        path,
        response.status_code,
        duration_ms,
        request.remote_addr or "unknown",
        who,
        extra={
            "method": request.method,
            "path": path,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2),
            "client_ip": request.remote_addr,
            "api_key": who,
        },
    )
    return response


def _presented_fingerprint() -> str:
    """Who sent a request that no key let in: the fingerprint of what it sent, or ``-``."""
    presented = auth.presented_key()
    return fingerprint(presented) if presented else "-"
