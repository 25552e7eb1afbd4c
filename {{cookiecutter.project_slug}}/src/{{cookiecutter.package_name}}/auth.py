"""``require_api_key``: the decorator that guards a view, and the check behind it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from flask import after_this_request, current_app, g, request

from .errors import (
    APIError,
    ExpiredAPIKey,
    InsufficientScope,
    InvalidAPIKey,
    IPNotAllowed,
    MissingAPIKey,
)
from .keys import KeyRecord, fingerprint
from .security import client_ip_allowed

log = logging.getLogger(__name__)

EXPIRES_HEADER = "API-Key-Expires"
EXPIRY_WARNING = timedelta(days=7)
# Fingerprints of keys whose coming expiry this process has already logged.
_expiry_logged: set[str] = set()


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


def authenticate(required: frozenset[str]) -> KeyRecord:
    """Put the record of the request's key in ``g.api_key`` and return it.

    Anything else raises the APIError that explains why the request is refused.
    """
    # Each attribute read or write through Flask's context proxies costs about a
    # microsecond, and this runs on every keyed request: go through each proxy once.
    app, req = current_app._get_current_object(), request._get_current_object()
    presented = req.presented_key
    if not presented:
        _refuse(MissingAPIKey(), presented)
    record = app.extensions["api_keys"].lookup(presented)
    if record is None:
        _refuse(InvalidAPIKey(), presented)
    if record.revoked:
        _refuse(InvalidAPIKey(), presented, reason="revoked")
    if record.expires is not None:
        _announce_expiry(record)
        if record.is_expired(datetime.now(UTC)):
            _refuse(ExpiredAPIKey(), presented)
    # A stolen key is useless outside its allowlists (credential theft). Most servers and
    # keys have none, and this runs on every keyed request: then it costs one test.
    server_wide = app.config["API_ALLOWED_IPS"]
    if server_wide or record.allowed_ips:
        for allowlist in (server_wide, record.allowed_ips):
            if allowlist and not client_ip_allowed(req.remote_addr, allowlist):
                _refuse(IPNotAllowed(), presented)
    # Least privilege: a key does only what its scopes say (privilege escalation).
    missing = required and sorted(scope for scope in required if not record.has_scope(scope))
    if missing:
        _refuse(InsufficientScope(f"The API key lacks the scope {', '.join(missing)}."), presented)
    g._get_current_object().api_key = record  # g.api_key, for the view and the access line
{%- if cookiecutter.use_rate_limiting %}
    # Count the request against the key's limit (denial of service, runaway clients); a
    # refusal still names the key in the access line, as g.api_key is set.
    app.extensions["rate_limiter"].admit(req, record)
{%- endif %}
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
    # A client that failed too often gets 429 whatever it sends, a right key included, so
    # a brute-force run learns nothing more (and floods no log); a 401 counts as a guess.
    limiter = current_app.extensions["rate_limiter"]
    limiter.refuse_if_blocked(request.remote_addr or "-", guess=error.status == 401)
{%- endif %}
    # Log who tried and why, by fingerprint: the raw key never reaches a log (credential leak).
    reason = reason or error.code
    log.warning(
        "authentication failed: %s from %s, key fingerprint %s",
        reason,
        request.remote_addr,
        fingerprint(presented) if presented else "-",
        extra={"reason": reason, "client_ip": request.remote_addr},
    )
    raise error
