"""Alembic's entry point for ``flask db``: migrations run on the app's own database."""

from logging.config import fileConfig

from alembic import context
from flask import current_app
from sqlalchemy import TypeDecorator

migrate = current_app.extensions["migrate"]
# alembic.ini's logging: `flask db upgrade` says which migrations it ran.
fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def render_item(kind, value, autogen_context):
    """Write a column type of models.py (UTCDateTime) as the SQL type it stores: a
    migration must not import the models it outlives, and `sa.` is already imported."""
    if kind == "type" and isinstance(value, TypeDecorator):
        return f"sa.{value.impl!r}"
    return False  # Alembic's own rendering


def run_offline() -> None:
    """``flask db upgrade --sql``: print the SQL instead of running it."""
    url = migrate.db.engine.url.render_as_string(hide_password=False)
    context.configure(url=url, target_metadata=migrate.db.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    with migrate.db.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=migrate.db.metadata,
            render_item=render_item,
            **migrate.configure_args,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
