"""The migrations (Flask-Migrate, Alembic) and the models agree, run both ways, and a
migration written by ``flask db migrate`` for a new model passes the project's lint.

Each test runs ``flask db`` as a user does, in a subprocess, on the copy of the
migrated database conftest.py puts in instance/app.db.
"""

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from dbcommands import flask_db as run_flask_db

from {{ cookiecutter.package_name }} import create_app

PACKAGE = create_app.__module__
PROJECT = Path(__file__).resolve().parent.parent
DATABASE = "instance/app.db"


def flask_db(*arguments, pythonpath=None):
    """Run ``flask db ARGUMENTS`` on instance/app.db; return the finished process."""
    return run_flask_db(f"sqlite:///{Path(DATABASE).resolve()}", *arguments, pythonpath=pythonpath)


def tables():
    with sqlite3.connect(DATABASE) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows} - {"sqlite_sequence"}


def test_the_models_match_the_migrations():
    """A model changed without its migration would leave every new database behind the
    code: `flask db check` (Alembic's check) finds no operation left to write."""
    result = flask_db("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_every_migration_can_be_undone_and_done_again():
    assert {"api_keys", "registry_version", "items"} <= tables()
    down = flask_db("downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert tables() <= {"alembic_version"}
    up = flask_db("upgrade")
    assert up.returncode == 0, up.stderr
    assert {"api_keys", "registry_version", "items"} <= tables()
    assert flask_db("check").returncode == 0


def test_a_migration_written_for_a_new_model_passes_lint_and_applies(tmp_path):
    """What the README's "Add your own resource" has a user do: add a model, run
    `flask db migrate`, lint, `flask db upgrade`; on a copy of the project."""
    copy = tmp_path / "project"
    shutil.copytree(PROJECT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(PROJECT / "pyproject.toml", copy / "pyproject.toml")
    package = copy / "src" / PACKAGE
    with (package / "models.py").open("a", encoding="utf-8") as models:
        models.write(
            "\n\n"
            "class Note(db.Model):\n"
            '    """A resource of your own: every note belongs to an owner."""\n'
            "\n"
            '    __tablename__ = "notes"\n'
            "\n"
            "    id: Mapped[int] = mapped_column(primary_key=True)\n"
            "    owner: Mapped[str] = mapped_column(String(64), index=True)\n"
            "    text: Mapped[str] = mapped_column(String(2000))\n"
            "    created: Mapped[datetime] = mapped_column(UTCDateTime)\n"
        )
    versions = package / "migrations" / "versions"
    before = set(versions.glob("*.py"))

    written = flask_db("migrate", "-m", "add notes", pythonpath=str(copy / "src"))

    assert written.returncode == 0, written.stdout + written.stderr
    (migration,) = set(versions.glob("*.py")) - before
    assert "add_notes" in migration.name
    for lint in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *lint, str(migration)],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (lint, result.stdout, migration.read_text())
    applied = flask_db("upgrade", pythonpath=str(copy / "src"))
    assert applied.returncode == 0, applied.stderr
    assert "notes" in tables()
    assert flask_db("check", pythonpath=str(copy / "src")).returncode == 0
    # The project itself was not touched: its migrations are still its own.
    assert not list((PROJECT / "src" / PACKAGE / "migrations" / "versions").glob("*add_notes*"))
