"""The database: SQLAlchemy through Flask-SQLAlchemy, the schema through Flask-Migrate.

``flask db upgrade`` is the one way a schema is made or moved, in every
environment; the server never migrates by itself. A server refuses to start
when the database cannot be reached or its schema is behind the newest
migration (:func:`check_schema`), so it never serves on a half-made schema.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase

from .config import ConfigError
from .errors import NotReady, error_response

log = logging.getLogger(__name__)

# The migrations ship inside the package, so a wheel and an image carry them.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# A database that does not answer must not hold a request (or a start-up) for long.
CONNECT_TIMEOUT_SECONDS = 3


class Base(DeclarativeBase):
    pass


# Objects stay readable after a commit (a CLI prints the key it just created).
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()


def init_app(app: Flask) -> None:
    """Connect the app to DATABASE_URL; no connection is opened until one is needed."""
    url = make_url(app.config["DATABASE_URL"])
    options: dict[str, object] = {"pool_pre_ping": True}  # a restarted database is noticed
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    else:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS))
    app.register_error_handler(OperationalError, _database_unavailable)


def _database_unavailable(error: OperationalError):
    """A request that needs the database while it is down: 503, which a client may retry,
    and one line in the log, not a traceback per request for as long as the outage lasts."""
    log.warning("database unavailable: %s", type(error.orig or error).__name__)
    return error_response(NotReady("Not ready: database unavailable."))


def check_schema(app: Flask) -> None:
    """Refuse to serve (ConfigError) unless the database answers at the newest migration."""
    script = ScriptDirectory.from_config(_alembic_config())
    with app.app_context():
        try:
            with db.engine.connect() as connection:
                current = set(MigrationContext.configure(connection).get_current_heads())
        except SQLAlchemyError as error:
            raise ConfigError(
                f"DATABASE_URL: cannot reach the database at {safe_url(db.engine.url)} "
                f"({type(error.orig or error).__name__})"
            ) from None
    if current != set(script.get_heads()):
        raise ConfigError(
            "the database schema is not at the newest migration: run `flask db upgrade`"
        )


def safe_url(url) -> str:
    """DATABASE_URL as it may be shown: never its password (credential leak)."""
    return make_url(url).render_as_string(hide_password=True)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def close_connections(app: Flask) -> None:
    """Close the connections opened while building the app.

    gunicorn builds the app once, in its master, before forking the workers
    (preload_app): a connection opened there and inherited by several workers
    would carry their queries interleaved on one socket. Each worker opens its own.
    """
    with app.app_context():
        db.engine.dispose()
