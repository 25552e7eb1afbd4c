"""The hooks, run through the real cookiecutter command line.

Bad answers stop generation with one ``ERROR:`` line and leave nothing behind;
hostile answers are data, never code; an existing .env is never replaced.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from bakery import TEMPLATE_DIR, answers_for, load_keys_module, output, probe, read_env_file, run

# (variable, bad value): each must be refused by pre_gen_project.py.
BAD_ANSWERS = [
    ("project_slug", "9lives"),
    ("project_slug", "Bad_Slug"),
    ("project_slug", "-x"),
    ("project_slug", "ends-with-"),
    ("project_slug", "a" * 51),
    ("package_name", "class"),
    ("package_name", "match"),
    ("package_name", "json"),
    ("package_name", "flask"),
    ("package_name", "Has-Dash"),
    ("package_name", "Ünï"),
    ("key_prefix", "a"),
    ("key_prefix", "Abc"),
    ("key_prefix", "toolongprefix12345"),
    ("key_prefix", "1abc"),
    ("key_prefix", "ab_c"),
    ("api_key_header", "X API Key"),
    ("api_key_header", "X-Key:"),
    ("api_key_header", "Content-Length"),
    ("api_key_header", "authorization"),
    ("version", "one"),
    ("project_name", "Two\nLines"),
    ("project_name", "   "),
    ("description", "carriage\rreturn"),
    ("author_name", "tab\there"),
]

# Answers cookiecutter itself would coerce or refuse on the command line; a
# replay file (or cruft) hands them to the hook untouched.
BAD_REPLAYED_ANSWERS = [
    ("use_docker", "maybe"),
    ("use_rate_limiting", "yes please"),
    ("use_docs_page", 1),
    ("ci", "jenkins"),
    ("license", "GPL-3.0"),
]

# Names built to break out of the string literals the template renders them into.
HOSTILE_NAMES = {
    "triple-double": '"""; import os; os.system("touch {marker}"); """',
    "triple-single": "'''; raise SystemExit(1); '''",
    "backslash": "Ends with a backslash \\",
    "quote-backslash": 'Ends with a quote and a backslash "\\',
}


@pytest.fixture
def cookiecutter_cli(tmp_path, cookiecutter_config):
    """``cookiecutter_cli(*args)``: ``python -m cookiecutter`` as a user runs it, into tmp/out."""

    def _run(*args: str):
        command = [sys.executable, "-m", "cookiecutter", "--config-file", str(cookiecutter_config)]
        if "--replay-file" not in args:
            command.append("--no-input")
        return run([*command, *args, "-o", str(tmp_path / "out")], cwd=tmp_path, timeout=120)

    return _run


def hook_errors(stderr: str) -> list[str]:
    """The pre-generation hook's own ERROR lines (cookiecutter adds one of its own)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("ERROR: ") and "Stopping generation" not in line
    ]


def assert_nothing_left(out: Path) -> None:
    """The output directory holds no project (it may not exist at all)."""
    assert not out.exists() or not any(out.iterdir()), f"left behind: {list(out.iterdir())}"


def assert_refused(result, variable: str, out: Path) -> None:
    """Exit 1, exactly one ERROR line naming ``variable``, and no project directory."""
    assert result.returncode == 1, output(result)
    errors = hook_errors(result.stderr)
    assert len(errors) == 1, output(result)
    assert re.match(rf"ERROR: {variable}\b", errors[0]), errors[0]
    assert_nothing_left(out)


@pytest.mark.parametrize(("variable", "value"), BAD_ANSWERS, ids=repr)
def test_bad_answer_is_refused(variable, value, tmp_path, cookiecutter_cli):
    """Each validation rule stops generation before anything is left on disk."""
    result = cookiecutter_cli(str(TEMPLATE_DIR), f"{variable}={value}")
    assert_refused(result, variable, tmp_path / "out")


@pytest.mark.parametrize(("variable", "value"), BAD_REPLAYED_ANSWERS, ids=repr)
def test_bad_replayed_answer_is_refused(variable, value, tmp_path, cookiecutter_cli):
    """Booleans and choices are checked by the hook too, whatever cookiecutter let through."""
    answers = answers_for({})
    answers[variable] = value
    replay = tmp_path / "answers.json"
    replay.write_text(json.dumps({"cookiecutter": answers}), encoding="utf-8")
    result = cookiecutter_cli("--replay-file", str(replay), str(TEMPLATE_DIR))
    assert_refused(result, variable, tmp_path / "out")


def test_bad_boolean_on_command_line_is_refused(tmp_path, cookiecutter_cli):
    """use_docker=maybe on the command line stops generation and names the variable."""
    result = cookiecutter_cli(str(TEMPLATE_DIR), "use_docker=maybe")
    assert result.returncode != 0, output(result)
    assert "use_docker" in result.stderr + result.stdout
    assert_nothing_left(tmp_path / "out")


def env_lines_saying_kept(stdout: str) -> list[str]:
    """The summary lines that say an existing .env was kept."""
    return [line for line in stdout.splitlines() if ".env" in line and "kept" in line.lower()]


@pytest.mark.parametrize("template", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_project_name_is_data(template, tmp_path, cookiecutter_cli):
    """A name built to break out of a string literal generates fine and runs nothing."""
    marker = tmp_path / "PWNED"
    name = template.format(marker=marker)
    # The slug is given: one derived from a long marker path would be too long.
    context = {"project_name": name, "project_slug": "hostile-name"}
    result = cookiecutter_cli(str(TEMPLATE_DIR), *(f"{k}={v}" for k, v in context.items()))
    assert result.returncode == 0, output(result)
    (project,) = (tmp_path / "out").iterdir()
    pwned = [*tmp_path.rglob("PWNED"), *TEMPLATE_DIR.glob("PWNED")]
    assert not pwned, f"the project name ran as code: {pwned}"
    package = answers_for(context)["package_name"]
    info = probe(project, package, "/openapi.json")["/openapi.json"]["json"]["info"]
    assert info["title"] == name


def test_generation_points_to_the_key_without_printing_it(tmp_path, cookiecutter_cli):
    """The post-generation summary names .env but never prints the key itself."""
    result = cookiecutter_cli(str(TEMPLATE_DIR))
    assert result.returncode == 0, output(result)
    (project,) = (tmp_path / "out").iterdir()
    key = read_env_file(project / ".env")["API_KEYS"]
    assert load_keys_module(project).is_well_formed(key)
    assert key not in result.stdout + result.stderr
    assert ".env" in result.stdout


def test_existing_env_is_kept(tmp_path, cookiecutter_cli):
    """Re-generating over a project (or ``cruft update``) never replaces its .env."""
    first = cookiecutter_cli(str(TEMPLATE_DIR))
    assert first.returncode == 0, output(first)
    assert not env_lines_saying_kept(first.stdout), output(first)
    (project,) = (tmp_path / "out").iterdir()
    env_file = project / ".env"
    sentinel = "API_KEYS=sentinel-that-must-survive\n"
    env_file.write_text(sentinel, encoding="utf-8")
    again = cookiecutter_cli(str(TEMPLATE_DIR), "--overwrite-if-exists")
    assert again.returncode == 0, output(again)
    assert env_file.read_text(encoding="utf-8") == sentinel
    assert env_lines_saying_kept(again.stdout), output(again)
