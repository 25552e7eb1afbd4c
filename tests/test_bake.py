"""Checks on every project of the option matrix: what generation leaves behind."""

from __future__ import annotations

import re
import sqlite3
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from bakery import (
    MATRIX,
    Baked,
    load_keys_module,
    migrated_database,
    output,
    probe,
    read_env_file,
    run,
    text_files,
    tool,
)

# Jinja syntax that survived rendering. Python code legitimately closes nested
# dicts with "}}", so only the openers (and "%}") are searched in .py files.
JINJA_ANY = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
JINJA_IN_PYTHON = re.compile(r"\{\{|\{%|%\}|\{#")
# GitHub Actions expressions, written ${{ ... }}, belong in workflow files.
GITHUB_EXPRESSION = re.compile(r"\$\{\{[^{}]*\}\}")
# Flask's own page templates (src/<package>/templates/) are Jinja on purpose: there,
# only a cookiecutter variable is a leftover.
COOKIECUTTER_VARIABLE = re.compile(r"cookiecutter\.")

# Phrases that identify each licence text, and only that one.
LICENSE_PHRASES = {
    "MIT": ["MIT License", "Permission is hereby granted, free of charge"],
    "Apache-2.0": ["Apache License", "Version 2.0"],
    "BSD-3-Clause": [
        "Redistribution and use in source and binary forms",
        "Neither the name of the copyright holder",
    ],
    "Proprietary": ["All rights reserved"],
}


def test_no_template_syntax_left(baked: Baked):
    """No Jinja markup survives in any file or file name (a half-rendered project)."""
    found = []
    for path in baked.root.rglob("*"):
        if JINJA_ANY.search(path.name):
            found.append(f"{path.relative_to(baked.root)}: in the name")
    for path, text in text_files(baked.root):
        relative = path.relative_to(baked.root)
        if relative.parts[0] == ".github":
            text = GITHUB_EXPRESSION.sub("", text)
        pattern = JINJA_IN_PYTHON if path.suffix == ".py" else JINJA_ANY
        if relative.parts[0] == "src" and "templates" in relative.parts:
            pattern = COOKIECUTTER_VARIABLE
        for number, line in enumerate(text.splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "template syntax left behind:\n" + "\n".join(found)


# What rate limiting leaves in a project: settings, the library, Redis, a key's own limit
# (field, CLI option, list column), owners' limits (table, model, command), 429 answers and
# the limit headers.
RATE_LIMIT_TRACES = re.compile(
    r"RATELIMIT_|AUTH_FAILURE_LIMIT|flask[-_]limiter|\blimits(\[|==)|(from|import) limits\b"
    r"|\bredis\b|rate[-_ ]limit|owner[-_ ]?limit"
    r"|\b429\b|too many requests|X-RateLimit|\bRateLimit\b|RateLimit-Policy|Retry-After",
    re.I,
)
# What secret scanning leaves: its module and route, its setting, its library and answers.
# ("secret scanning" in words stays: keys.py says what the key format is made for.)
SECRET_SCANNING_TRACES = re.compile(
    r"secret[-_]scanning|SECRET_SCANNING|cryptography|Github-Public-Key|invalid_signature"
    r"|signing_keys_unavailable|true_positive|partner program",
    re.I,
)


def test_disabled_options_leave_no_trace(baked: Baked, tmp_path):
    """A turned-off option leaves no file, mention or column behind; a turned-on one its
    files."""
    context = baked.context
    docker_files = [baked.root / name for name in ("Dockerfile", ".dockerignore", "compose.yaml")]
    if context["use_docker"]:
        assert all(path.is_file() for path in docker_files)
    else:
        assert not any(path.exists() for path in docker_files)
        mentions = [
            str(path.relative_to(baked.root))
            for path, text in text_files(baked.root)
            if "docker" in text.lower()
        ]
        assert not mentions, f"Docker mentioned with use_docker off: {mentions}"
    workflows = baked.root / ".github"
    if context["ci"] == "github":
        assert list(workflows.glob("workflows/*.yml")), "ci=github but no workflow"
    else:
        assert not workflows.exists()
    if not context["use_rate_limiting"]:
        mentions = [
            str(path.relative_to(baked.root))
            for path, text in text_files(baked.root)
            if re.search(RATE_LIMIT_TRACES, text)
        ]
        assert not mentions, f"rate limiting mentioned with use_rate_limiting off: {mentions}"
        assert not list(baked.root.rglob("*ratelimit*"))
    scanning_files = list(baked.root.rglob("*secret_scanning*"))
    if context["use_secret_scanning"]:
        assert len(scanning_files) == 2, scanning_files  # the module and its tests
    else:
        assert not scanning_files
        mentions = [
            str(path.relative_to(baked.root))
            for path, text in text_files(baked.root)
            if SECRET_SCANNING_TRACES.search(text)
        ]
        assert not mentions, f"secret scanning mentioned with use_secret_scanning off: {mentions}"
    # The schema the migrations make: a key's own limit, and the count it shares with the
    # key it replaced, are columns only with rate limiting; owners' limits a table.
    schema = migrated_schema(baked, tmp_path)
    columns = set(schema["api_keys"])
    assert {"name", "owner", "digest"} <= columns, columns
    limit_columns = columns & RATE_LIMIT_COLUMNS
    if context["use_rate_limiting"]:
        assert limit_columns == RATE_LIMIT_COLUMNS, columns
        assert set(schema["owner_limits"]) == {"owner", "rate_limit", "version"}, schema
    else:
        assert not limit_columns, f"rate-limit columns with use_rate_limiting off: {columns}"
        assert set(schema) == {"alembic_version", "api_keys", "registry_version", "items"}


# The columns of api_keys that only rate limiting needs.
RATE_LIMIT_COLUMNS = {"rate_limit", "counter"}


def migrated_schema(baked: Baked, directory: Path) -> dict[str, list[str]]:
    """Each table's columns in a database the project's `flask db upgrade` made."""
    url = migrated_database(baked.root, baked.package, directory)
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'"
        )
        return {
            table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            for (table,) in tables.fetchall()
        }
    finally:
        connection.close()


@pytest.mark.parametrize(
    "name", [name for name, answers in MATRIX.items() if answers.get("use_docs_page") is False]
)
def test_no_docs_page_when_not_chosen(bake, name: str):
    """With use_docs_page off, /docs does not exist (a 404 in JSON, like every error)."""
    baked = bake(**MATRIX[name])
    answer = probe(baked.root, baked.package, "/docs")["/docs"]
    assert answer["status"] == 404
    assert answer["json"]["error"] == "not_found"


def test_env_file_holds_a_fresh_valid_key(baked: Baked):
    """.env is owner-only and holds APP_ENV=development and one well-formed key."""
    env_file = baked.root / ".env"
    assert env_file.is_file()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["APP_ENV"] == "development"
    key = values["API_KEYS"]
    keys = load_keys_module(baked.root)
    assert keys.is_well_formed(key), "the generated key fails its own shape/checksum check"
    assert key.startswith(f"{baked.context['key_prefix']}_")
    assert not keys.is_well_formed(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_key_is_only_in_env_file(baked: Baked):
    """The secret is written to .env and nowhere else in the project (credential leak)."""
    key = read_env_file(baked.root / ".env")["API_KEYS"]
    holders = [
        str(path.relative_to(baked.root)) for path, text in text_files(baked.root) if key in text
    ]
    assert holders == [".env"]


def test_env_example_has_the_names_but_no_key(baked: Baked):
    """.env.example documents every .env name and holds nothing shaped like a key or hash."""
    example = baked.root / ".env.example"
    text = example.read_text(encoding="utf-8")
    keys = load_keys_module(baked.root)
    key_shape = re.compile(
        rf"{re.escape(keys.KEY_PREFIX)}_[0-9A-Za-z]{{{keys.RANDOM_LENGTH + keys.CHECKSUM_LENGTH}}}"
    )
    assert not key_shape.search(text)
    assert not re.search(r"sha256:[0-9a-f]{64}", text)
    for name in read_env_file(baked.root / ".env"):
        assert re.search(rf"^#?\s*{name}=", text, re.MULTILINE), f"{name} missing from .env.example"


def test_git_ignores_env_file(baked: Baked, project_copy):
    """In a fresh git repository, .env is ignored and .env.example is not."""
    project = project_copy(baked)
    assert run(["git", "init", "-q"], cwd=project).returncode == 0
    ignored = run(["git", "check-ignore", "-q", ".env"], cwd=project)
    assert ignored.returncode == 0, output(ignored)
    example = run(["git", "check-ignore", "-q", ".env.example"], cwd=project)
    assert example.returncode == 1, output(example)


def test_license_matches_choice(baked: Baked):
    """LICENSE carries the chosen licence (and no other), with the author's name."""
    choice = baked.context["license"]
    text = (baked.root / "LICENSE").read_text(encoding="utf-8")
    for phrase in LICENSE_PHRASES[choice]:
        assert phrase.lower() in text.lower(), f"{phrase!r} missing from the {choice} LICENSE"
    for other, phrases in LICENSE_PHRASES.items():
        if other != choice:
            assert not all(phrase in text for phrase in phrases), f"{other} text in {choice}"
    assert str(baked.context["author_name"]) in text


def test_pyproject_carries_the_answers(baked: Baked):
    """pyproject.toml parses and holds every answer verbatim (quotes and backslashes too)."""
    project = tomllib.loads((baked.root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    context = baked.context
    assert project["name"] == context["project_slug"]
    assert project["version"] == context["version"]
    assert project["description"] == context["description"]
    assert project["authors"][0]["name"] == context["author_name"]
    assert project["authors"][0]["email"] == context["author_email"]
    if context["license"] == "Proprietary":
        assert "license" not in project
    else:
        assert project["license"] == context["license"]


def test_project_name_survives_into_openapi(baked: Baked):
    """The project name, quotes and all, is the OpenAPI title; the header is the scheme's."""
    document = probe(baked.root, baked.package, "/openapi.json")["/openapi.json"]
    assert document["status"] == 200
    info = document["json"]["info"]
    assert info["title"] == baked.context["project_name"]
    assert info["version"] == baked.context["version"]
    assert info["description"] == baked.context["description"]
    schemes = document["json"]["components"]["securitySchemes"]
    assert [scheme["name"] for scheme in schemes.values()] == [baked.context["api_key_header"]]


def test_readme_names_the_project(baked: Baked):
    """The generated README shows the project name verbatim."""
    readme = (baked.root / "README.md").read_text(encoding="utf-8")
    assert str(baked.context["project_name"]) in readme


def test_generated_tests_pass(baked: Baked, project_copy):
    """The project's own test suite passes on a fresh generation."""
    project = project_copy(baked)
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=project,
        timeout=600,
    )
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "--no-cache", "."],
        ["ruff", "format", "--check", "--no-cache", "."],
        ["bandit", "-q", "-r", "src", "-c", "pyproject.toml"],
    ],
    ids=["ruff-check", "ruff-format", "bandit"],
)
def test_generated_project_is_lint_clean(baked: Baked, command: list[str]):
    """The project passes the linters its own CI and pre-commit hooks run."""
    result = run([*tool(command[0]), *command[1:]], cwd=baked.root)
    assert result.returncode == 0, output(result)


def test_generated_pre_commit_config_is_valid(baked: Baked):
    """pre-commit accepts the generated .pre-commit-config.yaml."""
    result = run(
        [*tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=baked.root
    )
    assert result.returncode == 0, output(result)
