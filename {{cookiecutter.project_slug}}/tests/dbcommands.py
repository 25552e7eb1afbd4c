"""``flask db ...`` as a user runs it, for the tests that need a database made by the
project's own migrations (the fixtures in conftest.py, and a few tests of their own)."""

import os
import subprocess
import sys

from {{ cookiecutter.package_name }} import create_app

PACKAGE = create_app.__module__


def flask_db(database_url, *arguments, cwd=None, pythonpath=None):
    """Run ``flask db ARGUMENTS`` on ``database_url``; return the finished process."""
    environ = {**os.environ, "DATABASE_URL": database_url, "APP_ENV": "testing"}
    environ["PYTHONPATH"] = os.pathsep.join([*([pythonpath] if pythonpath else []), *sys.path])
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", PACKAGE, "db", *arguments],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def upgrade(database_url, cwd=None):
    """``flask db upgrade`` on ``database_url``; raise if it fails."""
    flask_db(database_url, "upgrade", cwd=cwd).check_returncode()
