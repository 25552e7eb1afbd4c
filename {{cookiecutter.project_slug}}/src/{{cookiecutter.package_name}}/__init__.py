"""The application factory.

Development: ``flask run``. Production, from the project root:
``gunicorn '{{ cookiecutter.package_name }}:create_app()'``
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import click
from flask import Flask

from . import (
    api,
    cors,
    db,
{%- if cookiecutter.use_docs_page %}
    docs,
{%- endif %}
    errors,
    keys_api,
    keystore,
    logs,
{%- if cookiecutter.use_rate_limiting %}
    ratelimit,
{%- endif %}
{%- if cookiecutter.use_secret_scanning %}
    secret_scanning,
{%- endif %}
    security,
)
from .config import ConfigError, load_config

__all__ = ["ConfigError", "create_app"]


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from environment variables (or, in tests, from ``environ``).

    Reads top to bottom: settings, logging, the database and the keys, transport
    security, error answers{% if cookiecutter.use_rate_limiting %}, rate limits{% endif %}, cross-origin rules, routes. Raises ConfigError, and so
    refuses to serve, when a setting is unsafe, the database is unreachable or
    behind its migrations, or no key is configured (fail closed).
    """
    app = Flask(__name__)
    app.config.from_mapping(load_config(os.environ if environ is None else environ))
    app.json.sort_keys = False

    logs.init_app(app)
    db.init_app(app)
    keystore.init_app(app)
    security.init_app(app)
    errors.init_app(app)
{%- if cookiecutter.use_rate_limiting %}
    ratelimit.init_app(app)
{%- endif %}
    cors.init_app(app)
    api.init_app(app)
    keys_api.init_app(app)
{%- if cookiecutter.use_secret_scanning %}
    secret_scanning.init_app(app)
{%- endif %}
{%- if cookiecutter.use_docs_page %}
    docs.init_app(app)
{%- endif %}

    if _serving():
        db.check_schema(app)
        keystore.load(app)
        db.close_connections(app)
    return app


def _serving() -> bool:
    """False while a ``flask`` command other than ``run`` loads the app: ``flask db``
    and ``flask keys`` must work on a database a server would refuse to serve from,
    to give it its schema or its first key."""
    command = click.get_current_context(silent=True)
    return command is None or command.info_name == "run"
