"""Transport rules: HTTPS only, which proxies to trust, IP allowlists, response headers."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
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
# Probes that load balancers send over plain HTTP: exempt from the HTTPS rule.
PROBES = ("/health", "/ready")
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
    """Flask's request, reading bodies defensively.

    A chunked body has no Content-Length to refuse up front, so Werkzeug stops
    reading it at the limit and hands on a truncated body: that is a body too
    large (resource exhaustion), a 413, not a malformed one. A body nested a
    thousand levels deep exhausts the JSON parser's recursion, and a malformed
    chunk cannot be read at all: each a 400, not a crash.
    """

    def get_data(self, *args: Any, **kwargs: Any) -> Any:
        try:
            data = super().get_data(*args, **kwargs)
        except HTTPException:
            raise
        except Exception:  # the server's stream failed: a malformed chunk, a hang-up
            raise BadRequest("The request body could not be read.") from None
        limit = self.max_content_length
        if self.content_length is None and limit is not None and len(data) >= limit:
            raise RequestEntityTooLarge()
        return data

    def get_json(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_json(*args, **kwargs)
        except RecursionError:
            raise BadRequest("The JSON body is nested too deeply.") from None


class ForwardedClient:
    """WSGI middleware: the client is the address TRUSTED_PROXIES hops back in
    X-Forwarded-For, and only if that is a valid IP address; otherwise it is unknown.

    Never the proxy's own address: a proxy that appends to the header passes on
    whatever the client sent first, so a header that names no client (fewer hops,
    an unbalanced quote, not an address) would otherwise make the client look like
    the proxy, and a stolen key would pass any allowlist that holds the proxy
    (client IP spoofing). An unknown client fails every allowlist.
    """

    def __init__(self, app: Any, hops: int) -> None:
        self.app = app
        self.hops = hops

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        proxy = environ.pop("REMOTE_ADDR", None)
        forwarded = [part.strip() for part in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        client = forwarded[-self.hops] if len(forwarded) >= self.hops else ""
        if client_ip(client) is not None:
            environ["REMOTE_ADDR"] = client
        else:  # log the proxy only: nothing from the header reaches a log line
            log.warning("X-Forwarded-For names no client (via %s): the client is unknown", proxy)
        # Only https is secure; a proxy forwarding anything else (wss, junk) is plain HTTP.
        if environ.get("wsgi.url_scheme") != "https":
            environ["wsgi.url_scheme"] = "http"
        return self.app(environ, start_response)


def init_app(app: Flask) -> None:
    """Trust proxies as configured, refuse plain HTTP, and set the security headers."""
    app.request_class = APIRequest
    # Unknown paths such as /v1//whoami answer 404 in JSON, never a redirect to a URL
    # built from the client's Host header (open redirect, host header injection).
    app.url_map.merge_slashes = False
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        # Only as many X-Forwarded-* hops as TRUSTED_PROXIES says (client IP and scheme spoofing).
        app.wsgi_app = ProxyFix(ForwardedClient(app.wsgi_app, hops), x_for=0, x_proto=hops)  # type: ignore[method-assign]
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
    ip = client_ip(address)
    return ip is not None and any(ip in network for network in networks)


def client_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address, or None when it is not one (an unknown client).

    A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d: they come back as IPv4.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def _require_https() -> None:
    # Load-balancer probes check /health and /ready over plain HTTP; they carry no secret.
    if request.is_secure or (request.path in PROBES and request.method in ("GET", "HEAD")):
        return
    presented = auth.presented_key()
    record = current_app.extensions["api_keys"].lookup(presented) if presented else None
    if record is not None and not record.revoked and not record.is_expired(datetime.now(UTC)):
        # The key crossed the network in clear (credential over plaintext): say so loudly.
        log.error(
            "valid API key %r (fingerprint %s) was sent over plain HTTP from %s: rotate it",
            record.name,
            record.fingerprint,
            request.remote_addr or "unknown",
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
