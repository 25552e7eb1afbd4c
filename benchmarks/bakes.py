"""A default project from the template, made and keyed the way a user does it."""

from __future__ import annotations

import json
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
