"""``require_api_key``: the decorator that guards a view, and the check behind it."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from flask import after_this_request, current_app, g, request

from . import {% if cookiecutter.use_rate_limiting %}ratelimit, {% endif %}security
from .config import API_KEY_HEADER
from .errors import (
    APIError,
    ExpiredAPIKey,
    InsufficientScope,
    InvalidAPIKey,
    IPNotAllowed,
    MissingAPIKey,
)
from .keys import KeyRecord, fingerprint

log = logging.getLogger(__name__)

EXPIRES_HEADER = "API-Key-Expires"
EXPIRY_WARNING = timedelta(days=7)
# Fingerprints of keys whose coming expiry this process has already logged.
_expiry_logged: set[str] = set()
# The same refusal of the same client and key is logged once a minute at most, and the
# app remembers at most this many of them, however many clients come.
WARNING_INTERVAL = 60.0
MAX_WARNINGS_TRACKED = 10_000
_warnings_lock = threading.Lock()


def require_api_key(view_or_scope: Callable[..., Any] | str | None = None, /, *scopes: str):
    """Let a request reach the view only with a valid key that has every listed scope.

    Use it bare, ``@require_api_key``, for any valid key, or with scopes,
    ``@require_api_key("items:write")``. The view finds the key's record (name,
    scopes, expiry; never the secret) in ``g.api_key``.
    """
    if callable(view_or_scope):
        return _guard(view_or_scope, frozenset())
    required = frozenset(scope for scope in (view_or_scope, *scopes) if scope)
    return functools.partial(_guard, required=required)


def _guard(view: Callable[..., Any], required: frozenset[str]) -> Callable[..., Any]:
    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        authenticate(required)
        return view(*args, **kwargs)

    guarded.required_scopes = required  # type: ignore[attr-defined]
    return guarded


def presented_key() -> str:
    """The key the request sent in API_KEY_HEADER, or ``""`` when it sent none.

    Only that header counts: keys in URLs or bodies end up in logs and caches.
    HTTP trims spaces and tabs around a header value and nothing else, so a key
    padded with other white space (a non-breaking space) is refused as it came.
    """
    return request.headers.get(API_KEY_HEADER, "").strip(" \t")


def authenticate(required: frozenset[str]) -> KeyRecord:
    """Put the record of the request's key in ``g.api_key`` and return it.

    Anything else raises the APIError that explains why the request is refused.
    """
    presented = presented_key()
    if not presented:
        _refuse(MissingAPIKey(), presented)
    record = current_app.extensions["api_keys"].lookup(presented)
    if record is None:
        _refuse(InvalidAPIKey(), presented)
    if record.revoked:
        _refuse(InvalidAPIKey(), presented, reason="revoked")
    if record.expires is not None:
        _announce_expiry(record)
        if record.is_expired(datetime.now(UTC)):
            _refuse(ExpiredAPIKey(), presented)
    g.api_key = record  # for the view and the access line
{%- if cookiecutter.use_rate_limiting %}
    # Count the request before checking what the key may do, so that refused requests
    # count too (denial of service, runaway clients).
    ratelimit.admit(record)
{%- endif %}
    # A stolen key is useless outside its allowlists (credential theft).
    for allowlist in (current_app.config["API_ALLOWED_IPS"], record.allowed_ips):
        if not security.client_ip_allowed(request.remote_addr, allowlist):
            _refuse(IPNotAllowed(), presented)
    # Least privilege: a key does only what its scopes say (privilege escalation).
    missing = sorted(scope for scope in required if not record.has_scope(scope))
    if missing:
        refusal = InsufficientScope(
            f"The API key lacks the scope {', '.join(missing)}.", required_scopes=sorted(required)
        )
        _refuse(refusal, presented)
    current_app.extensions["api_keys"].record_use(record)  # its last use and request count
    return record


def _announce_expiry(record: KeyRecord) -> None:
    """Tell the client when its key ends, and the operator once when that is near."""
    expires = record.expires.isoformat()  # type: ignore[union-attr]

    @after_this_request
    def add_header(response):
        response.headers[EXPIRES_HEADER] = expires
        return response

    remaining = record.expires - datetime.now(UTC)  # type: ignore[operator]
    if timedelta(0) < remaining <= EXPIRY_WARNING and record.fingerprint not in _expiry_logged:
        _expiry_logged.add(record.fingerprint)
        log.warning(
            "API key %r (fingerprint %s) expires in %s, at %s: rotate it",
            record.name,
            record.fingerprint,
            str(remaining).split(".")[0],
            expires,
        )


def _refuse(error: APIError, presented: str, reason: str | None = None) -> NoReturn:
{%- if cookiecutter.use_rate_limiting %}
    if error.status == 401:
        # A failed authentication counts against the client's cap: past it, the client
        # gets 429 whatever it sends, a right key included (brute force).
        ratelimit.count_failure()
{%- endif %}
    # Who tried and why, by fingerprint: the raw key never reaches a log (credential leak).
    reason = reason or error.code
    key_fingerprint = fingerprint(presented) if presented else "-"
    client = request.remote_addr or "unknown"
    if _first_in_a_while((reason, client, key_fingerprint)):
        log.warning(
            "authentication failed: %s from %s, key fingerprint %s",
            reason,
            client,
            key_fingerprint,
            extra={"reason": reason, "client_ip": client},
        )
    raise error


def _first_in_a_while(warning: tuple[str, str, str]) -> bool:
    """True at most once a minute for the same refusal of the same client and key, so a
    client looping on a refused request cannot flood the log (log flooding)."""
    now = time.monotonic()
    with _warnings_lock:
        last_warned = current_app.extensions.setdefault("auth_warnings", {})
        if len(last_warned) >= MAX_WARNINGS_TRACKED:
            last_warned.clear()
        if now - last_warned.get(warning, -WARNING_INTERVAL) < WARNING_INTERVAL:
            return False
        last_warned[warning] = now
        return True
