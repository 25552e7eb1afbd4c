"""A default project from the template, made and keyed the way a user does it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN_DIR = Path(sys.executable).parent


@dataclass(frozen=True)
class Project:
    root: Path
    package: str
    key_header: str
    site: Path | None = None  # the project installed, for its `flask` commands (install())


def bake(template: Path, work: Path) -> Project:
    """``cookiecutter --no-input TEMPLATE``, with a config of our own (no user defaults).

    The answers, derived ones included, come back from the replay file cookiecutter
    writes for every generation.
    """
    config = work / "cookiecutter.yaml"
    config.write_text(
        f"cookiecutters_dir: {json.dumps(str(work / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(work / 'replay'))}\n",
        encoding="utf-8",
    )
    command = [str(BIN_DIR / "cookiecutter"), "--no-input", "--config-file", str(config)]
    output = work / "projects"
    result = subprocess.run(  # noqa: S603 - our interpreter's cookiecutter, fixed arguments
        [*command, "--output-dir", str(output), str(template)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cookiecutter failed:\n{result.stdout}{result.stderr}")
    (replay,) = (work / "replay").glob("*.json")
    answers = json.loads(replay.read_text(encoding="utf-8"))["cookiecutter"]
    return Project(
        output / answers["project_slug"], answers["package_name"], answers["api_key_header"]
    )


def new_key(project: Project) -> tuple[str, str]:
    """A key and its ``sha256:`` entry for API_KEYS, from the project's own script."""
    result = subprocess.run(
        [sys.executable, "scripts/generate_api_key.py", "--hash"],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=True,
    )
    key, entry = result.stdout.split()
    return key, entry


def install(project: Project, work: Path) -> Project:
    """The project installed into the run's directory with pip, for its ``flask`` commands.

    ``flask keys`` is a command plugin that the package's metadata registers, so it
    exists only where the project is installed. ``pip install --target`` without
    dependencies (this environment has them); pip builds in the source tree, so it
    builds a copy.
    """
    source, site = work / "install" / "source", work / "install" / "site"
    shutil.copytree(project.root, source, symlinks=True)
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--quiet"]
    command += ["--disable-pip-version-check", "--target", str(site), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install the project:\n{result.stderr}")
    return dataclasses.replace(project, site=site)


def flask(project: Project, env: dict[str, str], *arguments: str) -> str:
    """``flask --app PACKAGE ARGUMENTS`` in the project root, as its README runs it; stdout.

    The project's ``flask`` is this interpreter's with the project installed (install()),
    and ``env`` the server's settings, DATABASE_URL included, without .env or .flaskenv.
    """
    if project.site is None:
        raise RuntimeError("flask commands need the project installed: install() first")
    result = subprocess.run(  # noqa: S603 - our interpreter's flask, fixed arguments
        [str(BIN_DIR / "flask"), "--app", project.package, *arguments],
        cwd=project.root,
        env={**env, "PYTHONPATH": str(project.site), "FLASK_SKIP_DOTENV": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask {' '.join(arguments)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def upgrade(project: Project, env: dict[str, str]) -> None:
    """``flask db upgrade``: the one way the project's schema is made; servers never migrate."""
    flask(project, env, "db", "upgrade")


def create_key(project: Project, env: dict[str, str], name: str, *options: str) -> str:
    """``flask keys create NAME [OPTIONS]``: a key in the registry (the database), printed
    once."""
    return flask(project, env, "keys", "create", name, *options).strip()
