"""The interactive API docs at /docs: Swagger UI, rendered from /openapi.json.

Everything the page loads comes from this server. Swagger UI's own files ship in
the flask-swagger-ui package (we use its files, not its blueprint, which renders
an inline script); templates/docs.html loads them and static/docs/init.js starts
them. So the page's Content-Security-Policy (security.py) can refuse inline code
and every other origin. The key typed into "Authorize" lives in the page's
memory only. The page needs no key; the HTTPS rule applies to it as to the API.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask, abort, render_template, send_from_directory

from .openapi import TITLE, undocumented

SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).parent / "dist"
# Only what the page loads; the package's other files (an OAuth2 redirect page,
# the standalone preset) are never served.
SWAGGER_UI_FILES = frozenset(
    {"swagger-ui-bundle.js", "swagger-ui.css", "index.css", "favicon-32x32.png"}
)

docs = Blueprint("docs", __name__, url_prefix="/docs")


def init_app(app: Flask) -> None:
    """Serve the docs page and Swagger UI's files under /docs."""
    app.register_blueprint(docs)


@docs.get("")
def page():
    """The docs page: a shell that loads Swagger UI and points it at /openapi.json."""
    return render_template("docs.html", title=TITLE)


@docs.get("/swagger-ui/<name>")
@undocumented
def swagger_ui(name: str):
    """One of Swagger UI's files, from the installed package."""
    if name not in SWAGGER_UI_FILES:
        abort(404)
    response = send_from_directory(SWAGGER_UI_DIR, name)
    # Flask marks files "no-cache"; security.py gives them the API's "no-store" instead.
    del response.headers["Cache-Control"]
    return response
