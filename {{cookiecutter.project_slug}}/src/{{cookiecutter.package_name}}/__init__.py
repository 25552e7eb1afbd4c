"""The application factory.

Development: ``flask run``. Production, from the project root:
``gunicorn '{{ cookiecutter.package_name }}:create_app()'``
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from . import api, {% if cookiecutter.use_docs_page %}docs, {% endif %}errors, logs{% if cookiecutter.use_rate_limiting %}, ratelimit{% endif %}, registry, security
from .config import ConfigError, load_config

__all__ = ["ConfigError", "create_app"]


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from environment variables (or, in tests, from ``environ``).

    Reads top to bottom: settings, logging, the keys, transport security, error
    answers{% if cookiecutter.use_rate_limiting %}, rate limits{% endif %}, routes. Raises ConfigError, and so refuses to
    start, when a setting is unsafe or no key is configured (fail closed).
    """
    app = Flask(__name__)
    app.config.from_mapping(load_config(os.environ if environ is None else environ))
    app.json.sort_keys = False

    logs.init_app(app)
    registry.init_app(app)
    security.init_app(app)
    errors.init_app(app)
{%- if cookiecutter.use_rate_limiting %}
    ratelimit.init_app(app)
{%- endif %}
    api.init_app(app)
{%- if cookiecutter.use_docs_page %}
    docs.init_app(app)
{%- endif %}
    return app
