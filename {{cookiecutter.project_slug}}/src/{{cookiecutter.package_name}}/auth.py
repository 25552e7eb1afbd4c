"""``require_api_key``: the decorator that guards a view, and the check behind it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from flask import current_app, g, request

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
from .security import client_ip_allowed

log = logging.getLogger(__name__)


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
        g.api_key = authenticate(required)
        return view(*args, **kwargs)

    guarded.required_scopes = required  # type: ignore[attr-defined]
    return guarded


def authenticate(required: frozenset[str]) -> KeyRecord:
    """Return the record of the request's key, or raise the APIError that explains why not."""
    # Only the configured header counts: keys in URLs or bodies end up in logs and caches.
    presented = request.headers.get(API_KEY_HEADER, "").strip()
    if not presented:
        _refuse(MissingAPIKey(), presented)
    g.presented_fingerprint = fingerprint(presented)
    record = current_app.extensions["api_keys"].lookup(presented)
    if record is None:
        _refuse(InvalidAPIKey(), presented)
    if record.is_expired(datetime.now(UTC)):
        _refuse(ExpiredAPIKey(), presented)
    # A stolen key is useless outside its allowlists (credential theft).
    allowed = client_ip_allowed(current_app.config["API_ALLOWED_IPS"]) and client_ip_allowed(
        record.allowed_ips
    )
    if not allowed:
        _refuse(IPNotAllowed(), presented)
    # Least privilege: a key does only what its scopes say (privilege escalation).
    missing = sorted(scope for scope in required if not record.has_scope(scope))
    if missing:
        _refuse(InsufficientScope(f"The API key lacks the scope {', '.join(missing)}."), presented)
    return record


def _refuse(error: APIError, presented: str) -> NoReturn:
    # Log who tried and why, by fingerprint: the raw key never reaches a log (credential leak).
    log.warning(
        "authentication failed: %s from %s, key fingerprint %s",
        error.code,
        request.remote_addr,
        fingerprint(presented) if presented else "-",
        extra={"reason": error.code, "client_ip": request.remote_addr},
    )
    raise error
