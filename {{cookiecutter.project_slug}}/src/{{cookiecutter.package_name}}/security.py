"""Transport rules: HTTPS only, which proxies to trust, IP allowlists, response headers."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from . import auth
from .errors import HTTPSRequired
from .keys import Network

log = logging.getLogger(__name__)

# Headers for a JSON API that no browser should render, frame, sniff or cache.
API_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# Two years: browsers never try plain HTTP again (SSL stripping).
HSTS = "max-age=63072000; includeSubDomains"
{%- if cookiecutter.use_docs_page %}
# The /docs page alone runs code: Swagger UI's scripts and styles from this server, its
# icons as data: images, requests to this API only; nothing inline, nothing from elsewhere
# (cross-site scripting, key exfiltration).
DOCS_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PAGE_ENDPOINT = "docs.page"
{%- endif %}


class APIRequest(Request):
    """Flask's request, where a streamed body cut off at MAX_CONTENT_LENGTH is a 413.

    A chunked body has no Content-Length to refuse up front, so Werkzeug stops
    reading it at the limit and the JSON parser sees a truncated document: that
    is a body too large (resource exhaustion), not a malformed one.
    """

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        limit = self.max_content_length
        streamed = e is not None and self.content_length is None and limit is not None
        if streamed and len(self.get_data(cache=True)) >= limit:  # type: ignore[operator]
            raise RequestEntityTooLarge()
        return super().on_json_loading_failed(e)


def init_app(app: Flask) -> None:
    """Trust proxies as configured, refuse plain HTTP, and set the security headers."""
    app.request_class = APIRequest
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        # Only as many X-Forwarded-* hops as TRUSTED_PROXIES says (client IP and scheme spoofing).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    if app.config["REQUIRE_HTTPS"]:
        app.before_request(_require_https)
    elif app.config["APP_ENV"] == "production":
        log.warning("REQUIRE_HTTPS is off in production: API keys may cross the network in clear")
    headers = dict(API_HEADERS)
    if app.config["APP_ENV"] == "production":
        headers["Strict-Transport-Security"] = HSTS
    app.after_request(functools.partial(_security_headers, headers))


def client_ip_allowed(address: str | None, networks: Iterable[Network]) -> bool:
    """True when ``address``, the client's IP as TRUSTED_PROXIES reveals it, is in ``networks``.

    An empty list allows everyone; a client whose address cannot be read is refused.
    """
    networks = tuple(networks)
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    # A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d; compare them as IPv4.
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return any(ip in network for network in networks)


def _require_https() -> None:
    # Load-balancer probes check /health over plain HTTP; it carries no secret.
    if request.is_secure or (request.path == "/health" and request.method in ("GET", "HEAD")):
        return
    presented = auth.presented_key()
    record = current_app.extensions["api_keys"].lookup(presented) if presented else None
    if record is not None and not record.revoked and not record.is_expired(datetime.now(UTC)):
        # The key crossed the network in clear (credential over plaintext): say so loudly.
        log.error(
            "valid API key %r (fingerprint %s) was sent over plain HTTP from %s: rotate it",
            record.name,
            record.fingerprint,
            request.remote_addr,
        )
    # 403, never a redirect: the key has already been sent, a redirect would send it again.
    raise HTTPSRequired()


def _security_headers(defaults: dict[str, str], response: Response) -> Response:
    headers = response.headers
{%- if cookiecutter.use_docs_page %}
    if response.mimetype == "text/html" and request.endpoint == DOCS_PAGE_ENDPOINT:
        headers["Content-Security-Policy"] = DOCS_PAGE_CSP
{%- endif %}
    for name, value in defaults.items():
        headers.setdefault(name, value)  # unless the view chose its own
    # Every answer, static files included: a shared or browser cache must never keep a
    # response to a keyed request (data exposure).
    headers["Cache-Control"] = API_HEADERS["Cache-Control"]
    return response
