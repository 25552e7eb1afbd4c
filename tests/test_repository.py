"""The template repository itself: its pins, its CI entry point, its own lint."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from bakery import (
    MATRIX,
    REQUIREMENT,
    TEMPLATE_DIR,
    Baked,
    answers_for,
    normalize,
    output,
    requirements_dev,
    run,
    tool,
)


def test_matrix_uses_every_option_value():
    """Every choice and both values of every boolean are baked by at least one combination."""
    options = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    baked = [answers_for(answers) for answers in MATRIX.values()]
    for variable, default in options.items():
        if isinstance(default, list):
            values = default
        elif isinstance(default, bool):
            values = [True, False]
        else:
            continue
        used = {answers[variable] for answers in baked}
        assert set(values) <= used, f"{variable}: {set(values) - used} never baked"


def test_requirements_dev_pins_every_line():
    """Every requirement of the template's tests is pinned exactly (reproducible CI)."""
    assert requirements_dev(), "requirements-dev.txt is empty"


def test_requirements_dev_matches_generated_pins(baked: Baked):
    """The generated project's runtime and dev pins appear, same version, in requirements-dev.txt.

    The template tests run the generated project with requirements-dev.txt;
    drifting pins would test a project nobody generates.
    """
    project = tomllib.loads((baked.root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared.extend(extra)
    pins = requirements_dev()
    for requirement in declared:
        match = REQUIREMENT.fullmatch(requirement.split(";", 1)[0].strip())
        assert match, f"generated pyproject.toml: {requirement!r} is not pinned with =="
        name = normalize(match["name"])
        assert pins.get(name) == match["version"], (
            f"{name}: pyproject.toml pins {match['version']}, "
            f"requirements-dev.txt pins {pins.get(name)}"
        )


def test_ci_runs_the_readme_test_command():
    """.ci/run is executable, strict, and ends with the README's test command verbatim."""
    script = TEMPLATE_DIR / ".ci" / "run"
    assert script.stat().st_mode & 0o111, ".ci/run is not executable"
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    command = [line for line in lines if line.strip() and not line.startswith("#")][-1]
    assert "pytest" in command
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    assert command in readme.splitlines(), f"README.md does not show {command!r}"


def test_ruff_lints_hooks_and_tests_but_not_the_template():
    """ruff sees hooks/ and tests/ and skips the Jinja template directory."""
    result = run([*tool("ruff"), "check", "--no-cache", "--show-files", "."], cwd=TEMPLATE_DIR)
    assert result.returncode == 0, output(result)
    files = result.stdout.splitlines()
    assert any("/hooks/pre_gen_project.py" in line for line in files), output(result)
    assert any("/tests/conftest.py" in line for line in files), output(result)
    assert not any("cookiecutter.project_slug" in line for line in files), output(result)


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "--no-cache", "."], ["ruff", "format", "--check", "--no-cache", "."]],
    ids=["ruff-check", "ruff-format"],
)
def test_template_repository_is_lint_clean(command: list[str]):
    """The hooks and tests pass the same linters as the projects they make."""
    result = run([*tool(command[0]), *command[1:]], cwd=TEMPLATE_DIR)
    assert result.returncode == 0, output(result)


def test_pre_commit_config_is_valid():
    """pre-commit accepts the template repository's own configuration."""
    result = run(
        [*tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=TEMPLATE_DIR
    )
    assert result.returncode == 0, output(result)


def test_readme_security_table_cites_real_tests():
    """Every test the README's Security section names exists, in the template's suite
    (``tests/...``) or in the generated project's (``project/tests/...``)."""
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    cited = re.findall(r"`(project/)?(tests/test_\w+\.py)::(test_\w+)`", section)
    assert len(cited) >= 14, "the Security table cites too few tests"
    missing = []
    for generated, path, name in cited:
        root = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" if generated else TEMPLATE_DIR
        source = root / path
        if not source.is_file() or not re.search(
            rf"^def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE
        ):
            missing.append(f"{generated}{path}::{name}")
    assert not missing, f"README.md cites tests that do not exist: {missing}"
