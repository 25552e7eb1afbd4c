"""The generated project's pre-commit hooks in a real git repository.

A fresh project's first commit passes every hook (.env, which holds the key, is
git-ignored; .env.example holds none). Then a staged file holding a real key is
refused by the ``no-api-keys`` hook, which names the file and the key's
fingerprint but never prints the key; a look-alike with a bad checksum is let
through.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bakery import BIN_DIR, Baked, clean_env, load_keys_module, output, run, tool

pytestmark = pytest.mark.slow


@pytest.fixture
def repository(default_project: Baked, project_copy, tmp_path):
    """A private copy of the default project, a git repository with the hooks installed.

    HOME, PRE_COMMIT_HOME and git's system config point nowhere real, so no
    setting of the machine's user leaks in. PATH starts with this interpreter's
    bin directory: the hooks run ruff, bandit and python3 from there.
    """
    root = project_copy(default_project)
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(
        HOME=str(home),
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit"),
        GIT_CONFIG_NOSYSTEM="1",
        PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    )

    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        return run(["git", *arguments], cwd=root, env=env)

    for arguments in (
        ["init", "-q"],
        ["config", "user.name", "Test User"],
        ["config", "user.email", "test@example.com"],
    ):
        assert git(*arguments).returncode == 0
    installed = run([*tool("pre-commit"), "install"], cwd=root, env=env)
    assert installed.returncode == 0, output(installed)
    return root, git


def test_first_commit_passes_every_hook(repository):
    _, git = repository
    assert git("add", "-A").returncode == 0
    staged = git("diff", "--cached", "--name-only").stdout.splitlines()
    assert ".env" not in staged
    assert ".env.example" in staged
    committed = git("commit", "-q", "-m", "Generated project")
    assert committed.returncode == 0, output(committed)


def test_secret_committed_to_git_is_blocked(repository):
    root, git = repository
    keys = load_keys_module(root)
    key = keys.generate_key()
    notes = Path(root, "notes.md")

    notes.write_text(f"# Notes\n\nThe staging key is {key}\n", encoding="utf-8")
    assert git("add", "notes.md").returncode == 0
    blocked = git("commit", "-q", "-m", "Add notes")
    assert blocked.returncode != 0, output(blocked)
    reported = blocked.stdout + blocked.stderr
    assert "notes.md:3" in reported, output(blocked)
    assert keys.fingerprint(key) in reported, output(blocked)
    assert key not in reported, "the hook printed the key it found"
    assert git("rev-parse", "--verify", "-q", "HEAD").returncode != 0, "a commit was made"

    # The same text with a checksum that does not match: an example, not a key.
    look_alike = key[:-1] + ("A" if key[-1] != "A" else "B")
    notes.write_text(f"# Notes\n\nKeys look like {look_alike}\n", encoding="utf-8")
    assert git("add", "notes.md").returncode == 0
    committed = git("commit", "-q", "-m", "Add notes")
    assert committed.returncode == 0, output(committed)
