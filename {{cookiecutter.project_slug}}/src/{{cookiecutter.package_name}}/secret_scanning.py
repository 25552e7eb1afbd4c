"""GitHub secret scanning: a key of ours found in public is revoked at once.

GitHub scans public code, issues, gists and npm packages for the regular
expression of our keys (see the README) and POSTs each match to
``/secret-scanning/github``, signed with one of its published ECDSA P-256
keys. A forged alert must change nothing, so the signature over the raw body
is checked (with ``cryptography``) before the body is even parsed. Each
reported token that is a live key of this project is then revoked through the
registry, as ``flask keys revoke`` does, so every server refuses it within
about two seconds. The answer labels each token by its SHA-256, never the
token itself: GitHub learns which of its matches were real keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import logging
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from flask import Blueprint, Flask, current_app, request
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from . import registry
from .errors import APIError
from .keys import hash_key, is_well_formed, redact_keys
from .schemas import body, response

log = logging.getLogger(__name__)

github = Blueprint("secret_scanning", __name__, url_prefix="/secret-scanning")

KEY_IDENTIFIER_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"
TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"
# Who revoked a key, in the audit line.
AUDIT_ACTOR = "github-secret-scanning"
# An alert is small (a few hundred bytes a token); the route takes no key, so it stays
# small whatever MAX_CONTENT_LENGTH allows elsewhere (resource exhaustion).
MAX_ALERT_BYTES = 512 * 1024
MAX_TOKENS = 1000
# GitHub waits 30 seconds at most for an answer: the key list must come well within that.
FETCH_TIMEOUT = 5
MAX_KEY_LIST_BYTES = 256 * 1024
# A made-up key identifier may fetch the list once a minute, no more (forged alerts
# must not make us hammer GitHub, whose unauthenticated limit is 60 requests an hour).
REFETCH_EVERY = 60.0
# GitHub may withdraw a key: a long-running process reads the list again after an hour.
KEYS_MAX_AGE = 3600.0
# A key identifier is a short token (GitHub's are 64 hex digits): anything else is
# refused before the key list is fetched.
_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidAlertSignature(APIError):
    status, code, title = 401, "invalid_signature", "Invalid signature"
    message = "The alert is not signed by one of GitHub's secret-scanning keys."


class SigningKeysUnavailable(APIError):
    status, code, title = 503, "signing_keys_unavailable", "Signing keys unavailable"
    message = "GitHub's signing keys cannot be fetched now, so the alert was not read; retry."


class Alert(BaseModel):
    """One match GitHub reports. Fields GitHub adds later are ignored, not refused as
    in our own bodies: ``source`` came late, and an alert must not bounce for it."""

    model_config = ConfigDict(extra="ignore", strict=True)

    token: str = Field(max_length=1000)
    type: str = Field(max_length=200)
    url: str = Field(default="", max_length=4096)
    source: str = Field(default="", max_length=100)


class Alerts(RootModel[list[Alert]]):
    """GitHub's alert: a JSON array of matches, a bounded number (resource exhaustion)."""

    root: Annotated[list[Alert], Field(max_length=MAX_TOKENS)]


class Label(BaseModel):
    """What GitHub is told of one token: its SHA-256, never the token."""

    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    token_type: str
    label: Literal["true_positive", "false_positive"]


class Labels(RootModel[list[Label]]):
    root: list[Label]


class PublicKey(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key_identifier: str
    key: str


class KeyList(BaseModel):
    """What SECRET_SCANNING_KEYS_URL answers: ``{"public_keys": [...]}``."""

    model_config = ConfigDict(extra="ignore")

    public_keys: list[PublicKey]


class GitHubKeys:
    """GitHub's signing keys as this process last fetched them.

    Fetched at the first alert and kept for an hour. An identifier the list in hand
    lacks (GitHub rotated its keys) fetches it again, at most once a minute; in
    between, or when GitHub cannot be reached, the alert gets 503 and GitHub sends
    it again later. An alert is never read unverified.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched = -math.inf  # when the list in hand was fetched (monotonic)
        self._next_fetch = -math.inf  # no fetch before this, after a failure or a refetch
        self._lock = threading.Lock()

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey:
        """The key GitHub publishes as ``identifier``; InvalidAlertSignature when GitHub
        lists no such key, SigningKeysUnavailable when the list cannot be had now."""
        with self._lock:
            now = time.monotonic()
            fresh = now - self._fetched < KEYS_MAX_AGE
            if fresh and identifier in self._keys:
                return self._keys[identifier]
            if now < self._next_fetch:
                wait = str(math.ceil(self._next_fetch - now))
                raise SigningKeysUnavailable(headers={"Retry-After": wait})
            if fresh:  # a refetch, for an identifier the list lacks
                self._next_fetch = now + REFETCH_EVERY
            try:
                self._keys = fetch_keys(self.url)
            except SigningKeysUnavailable:
                self._next_fetch = now + REFETCH_EVERY
                raise
            self._fetched = now
            if identifier not in self._keys:
                raise InvalidAlertSignature()
            return self._keys[identifier]


def fetch_keys(url: str) -> dict[str, ec.EllipticCurvePublicKey]:
    """GitHub's P-256 public keys by identifier, read from ``url``.

    Every listed key is kept, current or not: GitHub may still sign a retry with the
    key it used first. A key that is not P-256 is skipped; none at all is a failure.
    """
    try:
        # https, or http to this machine only: checked in config.py (forged keys).
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:  # noqa: S310  # nosec B310
            body = answer.read(MAX_KEY_LIST_BYTES + 1)
    except (OSError, http.client.HTTPException) as error:  # refused, timed out, 4xx/5xx
        log.error("secret scanning: GitHub's keys could not be fetched (%s)", _reason(error))
        raise SigningKeysUnavailable() from None
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    try:
        listed = KeyList.model_validate_json(body).public_keys
    except ValidationError:  # truncated at the size limit, or not a key list
        listed = []
    for entry in listed:
        try:
            key = serialization.load_pem_public_key(entry.key.encode())
        except (ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            keys[entry.key_identifier] = key
    if not keys:
        log.error("secret scanning: GitHub's keys could not be fetched (no P-256 key listed)")
        raise SigningKeysUnavailable()
    return keys


def _reason(error: BaseException) -> str:
    """Why a fetch failed, without the server's own words (an HTTP status at most)."""
    status = getattr(error, "code", None)
    return f"HTTP {status}" if isinstance(status, int) else type(error).__name__


def init_app(app: Flask) -> None:
    """Serve the alert endpoint, with GitHub's keys fetched by this process when needed."""
    app.extensions["github_signing_keys"] = GitHubKeys(app.config["SECRET_SCANNING_KEYS_URL"])
    app.register_blueprint(github)


def signed_by_github(view: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``view`` only for a body GitHub signed, checked before anything parses it
    (forged alerts); written above ``@body``, so the body is read once, bounded."""

    @functools.wraps(view)
    def verified(*args: Any, **kwargs: Any) -> Any:
        _verify_signature()
        return view(*args, **kwargs)

    # Added to those of the decorators below, for the document (openapi.py).
    verified.error_statuses = (  # type: ignore[attr-defined]
        *getattr(view, "error_statuses", ()),
        InvalidAlertSignature.status,
    )
    return verified


@github.post("/github")
@signed_by_github
@body(Alerts)
@response(Labels)
def github_alert(body: Alerts):
    """GitHub secret scanning: revoke the live keys it found in public.

    No API key: GitHub's ECDSA signature over the raw body, in the
    Github-Public-Key-Identifier and Github-Public-Key-Signature headers, is the
    credential. Each token is answered by its SHA-256 and labelled true_positive
    when it is a key this API issued. Nothing changes unless the signature, the
    body's size and its shape are all right.
    """
    now = datetime.now(UTC)
    return [
        {"token_hash": hash_key(alert.token), "token_type": alert.type, "label": _judge(alert, now)}
        for alert in body.root
    ]


def _verify_signature() -> None:
    """Raise InvalidAlertSignature (401) unless GitHub signed the raw body.

    The raw bytes, as GitHub signed them: parsing first and re-serialising would
    change them. Headers are checked before a key is fetched, so junk costs nothing.
    """
    identifier = request.headers.get(KEY_IDENTIFIER_HEADER, "")
    try:
        signature = base64.b64decode(request.headers.get(SIGNATURE_HEADER, ""), validate=True)
        decode_dss_signature(signature)  # DER (r, s): a made-up value fails here
    except (binascii.Error, ValueError):
        raise InvalidAlertSignature() from None
    if not _IDENTIFIER.fullmatch(identifier):
        raise InvalidAlertSignature()
    limit = min(MAX_ALERT_BYTES, current_app.config["MAX_CONTENT_LENGTH"])
    request.max_content_length = limit
    raw = request.get_data(cache=True)  # 413 past the limit, chunked bodies cut short included
    public_key = current_app.extensions["github_signing_keys"].get(identifier)
    try:
        public_key.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise InvalidAlertSignature() from None


def _judge(alert: Alert, now: datetime) -> str:
    """Label one reported token, revoking it first if it is a live key of ours.

    A key of ours that no longer works (revoked, expired) is still a true positive:
    it is a real credential that leaked, which is what GitHub asks to be told.
    """
    token = alert.token
    if not is_well_formed(token):  # offline: prefix, length and checksum
        return FALSE_POSITIVE
    entry = registry.find_key(token)
    where = redact_keys(alert.url) or "(no URL)"
    if entry is None:
        static = current_app.extensions["api_keys"].static.get(hash_key(token))
        if static is None:
            return FALSE_POSITIVE
        # API_KEYS is the servers' environment, out of this route's reach: say so loudly.
        log.error(
            "secret scanning: key %s of API_KEYS (fingerprint %s) leaked at %s: "
            "remove it from API_KEYS on every server now",
            static.name,
            static.fingerprint,
            where,
        )
        return TRUE_POSITIVE
    state = registry.status(entry, now)
    if not state.usable:
        log.warning(
            "secret scanning: key %s of %s (fingerprint %s), %s, leaked at %s",
            entry.name,
            entry.owner,
            entry.fingerprint,
            state,
            where,
        )
        return TRUE_POSITIVE
    registry.audit("revoke", registry.revoke(entry.name, now=now), by=AUDIT_ACTOR)
    # The operator's alarm: tell the customer, give them a new key.
    log.error(
        "secret scanning: key %s of %s (fingerprint %s) leaked at %s: revoked",
        entry.name,
        entry.owner,
        entry.fingerprint,
        where,
    )
    return TRUE_POSITIVE
