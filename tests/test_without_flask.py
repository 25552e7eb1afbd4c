"""Generation where only cookiecutter is installed, as with ``pipx run cookiecutter``.

The hooks and the first key must need nothing but the standard library.
"""

from __future__ import annotations

import os
import venv
from pathlib import Path

import pytest

from bakery import (
    TEMPLATE_DIR,
    clean_env,
    load_keys_module,
    output,
    read_env_file,
    requirements_dev,
    run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cookiecutter_only_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding the pinned cookiecutter and nothing of Flask's."""
    root = tmp_path_factory.mktemp("cookiecutter-only") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    version = requirements_dev()["cookiecutter"]
    result = run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            f"cookiecutter=={version}",
        ],
        timeout=600,
    )
    assert result.returncode == 0, output(result)
    return root


def test_generation_needs_no_flask(cookiecutter_only_venv, tmp_path):
    """The default project generates, with a valid key, where Flask cannot be imported."""
    bin_dir = cookiecutter_only_venv / "bin"
    no_flask = run([str(bin_dir / "python"), "-c", "import flask"])
    assert no_flask.returncode != 0, "flask is importable: the check proves nothing"
    config = tmp_path / "config.yaml"
    config.write_text(f"replay_dir: '{tmp_path / 'replay'}'\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run(
        [
            str(bin_dir / "cookiecutter"),
            "--no-input",
            "--config-file",
            str(config),
            str(TEMPLATE_DIR),
            "-o",
            str(out),
        ],
        cwd=tmp_path,
        env=clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
    )
    assert result.returncode == 0, output(result)
    (project,) = out.iterdir()
    key = read_env_file(project / ".env")["API_KEYS"]
    assert load_keys_module(project).is_well_formed(key)
