"""Cross-origin requests (CORS): closed unless CORS_ORIGINS names the sites that may call.

With CORS_ORIGINS empty nothing is set up, and no response carries an
``Access-Control-*`` header: browsers let no other site's script read an answer.
"""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from .auth import EXPIRES_HEADER
from .config import API_KEY_HEADER
from .logs import REQUEST_ID_HEADER
{%- if cookiecutter.use_rate_limiting %}
from .ratelimit import CLIENT_HEADERS
{%- endif %}

# How long a browser may keep a preflight's answer before asking again.
PREFLIGHT_MAX_AGE = 600


def init_app(app: Flask) -> None:
    """Let scripts on exactly the CORS_ORIGINS sites call the API from a browser.

    Credentials are never allowed: the key header is the only credential, so a
    site can spend only a key its own user gave it, never a cookie or a login of
    the browser's (cross-site request forgery). Other origins get no CORS header.
    """
    if not app.config["CORS_ORIGINS"]:
        return
    CORS(
        app,
        origins=list(app.config["CORS_ORIGINS"]),
        allow_headers=[API_KEY_HEADER, "Content-Type", REQUEST_ID_HEADER],
        # The headers a script may read: the request id, the key's expiry{% if cookiecutter.use_rate_limiting %}, the limits{% endif %}.
        expose_headers=[REQUEST_ID_HEADER, EXPIRES_HEADER{% if cookiecutter.use_rate_limiting %}, *CLIENT_HEADERS{% endif %}],
        supports_credentials=False,
        always_send=False,
        max_age=PREFLIGHT_MAX_AGE,
    )
