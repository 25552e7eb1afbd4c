"""Keeping a project current with cruft: create it from the template, change the
template, ``cruft update`` the project.

cruft clones its template with git, so the test uses a git repository of its own:
a copy of this template, committed in a temporary directory (offline, local paths
only). The project's secret (.env) and database (the key registry) must come through
untouched;
the hooks run again during the update and must change nothing of the project's,
nor print the generation summary for renders that cruft throws away.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from bakery import (
    DATABASE,
    TEMPLATE_DIR,
    clean_env,
    flask_env,
    output,
    read_env_file,
    run,
    tool,
    upgrade_database,
)

pytestmark = pytest.mark.slow

# Not part of the template: local environments, caches, the demo of the README.
NOT_TEMPLATE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "demo", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"
)
REGISTRY = str(DATABASE)
SLUG = "{{cookiecutter.project_slug}}"


def summary_lines(text: str) -> list[str]:
    """The lines of the post-generation summary found in a command's output."""
    markers = ("API key ", "Next:", "make install", "FLASK_RUN_PORT")
    return [line for line in text.splitlines() if any(marker in line for marker in markers)]


@pytest.fixture
def env(tmp_path, cookiecutter_config):
    """A git identity and no user or system git config; our cookiecutter config."""
    return clean_env(
        COOKIECUTTER_CONFIG=str(cookiecutter_config),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Template Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Template Test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )


@pytest.fixture
def git(env):
    """``git(cwd, *args)``: run git, fail the test on an error, return stdout."""

    def _git(cwd: Path, *args: str) -> str:
        result = run(["git", *args], cwd=cwd, env=env)
        assert result.returncode == 0, output(result)
        return result.stdout

    return _git


def commit_all(git, repository: Path, message: str) -> None:
    git(repository, "add", "-A")
    git(repository, "commit", "-q", "-m", message)


def test_cruft_update_applies_a_template_change_and_keeps_secrets(tmp_path, env, git):
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=NOT_TEMPLATE)
    git(template, "init", "-q")
    commit_all(git, template, "template v1")

    out = tmp_path / "out"
    created = run(
        [*tool("cruft"), "create", "--no-input", "--output-dir", str(out), str(template)],
        cwd=tmp_path,
        env=env,
    )
    assert created.returncode == 0, output(created)
    assert "written to .env" in created.stdout, "cruft create is a real generation: summary"
    (project,) = out.iterdir()
    recorded = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert recorded["context"]["cookiecutter"]["project_name"] == "My Secure API"

    # The project lives in git, as cruft wants, and has a database of its own.
    git(project, "init", "-q")
    commit_all(git, project, "generated")
    package = recorded["context"]["cookiecutter"]["package_name"]
    upgrade_database(project, flask_env(package))
    env_file = project / ".env"
    before = {path: (project / path).read_bytes() for path in (".env", REGISTRY)}
    key = read_env_file(env_file)["API_KEYS"]

    # A new template release: a README paragraph and a new file that uses the answers.
    readme = template / SLUG / "README.md"
    readme.write_text(
        readme.read_text(encoding="utf-8") + "\nA note from template v2.\n", encoding="utf-8"
    )
    (template / SLUG / "CHANGES.md").write_text(
        "# {{ cookiecutter.project_name }}: changes\n", encoding="utf-8"
    )
    commit_all(git, template, "template v2")

    checked = run([*tool("cruft"), "check"], cwd=project, env=env)
    assert checked.returncode != 0, "cruft check did not see the new template"

    updated = run([*tool("cruft"), "update", "-y"], cwd=project, env=env)
    assert updated.returncode == 0, output(updated)
    assert key not in updated.stdout + updated.stderr
    # Its two renders of the template live in temporary directories: no summary of them.
    assert not summary_lines(updated.stdout + updated.stderr), output(updated)
    assert "A note from template v2." in (project / "README.md").read_text(encoding="utf-8")
    assert (project / "CHANGES.md").read_text(encoding="utf-8") == "# My Secure API: changes\n"
    assert not list(project.rglob("*.rej")), "the update did not apply cleanly"

    # The secret and the database: byte for byte, and the secret still owner-only.
    for path, content in before.items():
        assert (project / path).read_bytes() == content, f"cruft update changed {path}"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    changed = sorted(line[3:] for line in git(project, "status", "--porcelain").splitlines())
    assert changed == [".cruft.json", "CHANGES.md", "README.md"], changed
    head = git(template, "rev-parse", "HEAD").strip()
    assert json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["commit"] == head

    # Once applied, there is nothing more to do.
    commit_all(git, project, "template v2 applied")
    again = run([*tool("cruft"), "update", "-y"], cwd=project, env=env)
    assert again.returncode == 0, output(again)
    assert "up to date" in again.stdout, output(again)
    assert (project / ".env").read_bytes() == before[".env"]
