"""The generated GitHub Actions workflow and Dependabot settings (ci == "github"), parsed.

Least privilege, actions pinned to full commit SHAs (a moved tag cannot change
what runs: supply-chain attack), the supported Pythons, and the same checks
the project runs locally.
"""

from __future__ import annotations

import re

import pytest
import yaml

from bakery import MATRIX, Baked

PYTHONS = ["3.11", "3.12", "3.13"]
# owner/repo[/path]@<40 hex>: a commit, not a tag or branch.
PINNED = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")

GITHUB_BAKES = [name for name, answers in MATRIX.items() if answers.get("ci", "github") == "github"]


@pytest.fixture(params=GITHUB_BAKES)
def github(request, bake) -> Baked:
    return bake(**MATRIX[request.param])


@pytest.fixture
def workflow(github):
    text = (github.root / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    return text, yaml.safe_load(text)


def steps(document):
    for job in document["jobs"].values():
        yield from job["steps"]


def test_workflow_runs_on_push_and_pull_request(workflow):
    _, document = workflow
    # YAML 1.1 reads the key `on` as the boolean true.
    triggers = document.get("on", document.get(True))
    assert "push" in triggers
    assert "pull_request" in triggers
    assert "pull_request_target" not in triggers  # runs untrusted code with secrets


def test_workflow_has_least_privilege(workflow):
    _, document = workflow
    assert document["permissions"] == {"contents": "read"}
    for name, job in document["jobs"].items():
        granted = job.get("permissions", {})
        assert "write" not in str(granted), f"job {name} may write: {granted}"


def test_workflow_tests_every_supported_python(workflow):
    text, document = workflow
    for job in document["jobs"].values():
        assert job["strategy"]["matrix"]["python-version"] == PYTHONS
    # Rendered literally for GitHub, not eaten by cookiecutter's Jinja.
    assert "${{ matrix.python-version }}" in text


def test_supply_chain_every_action_is_pinned_to_a_commit(workflow):
    text, document = workflow
    used = [step["uses"] for step in steps(document) if "uses" in step]
    assert used, "no action is used"
    for action in used:
        assert PINNED.fullmatch(action), f"{action} is not pinned to a full commit SHA"
    # Each pin says which release it is, for people and for Dependabot.
    for line in text.splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d", line), line


def test_checkout_does_not_keep_the_token(workflow):
    _, document = workflow
    for step in steps(document):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_workflow_runs_the_projects_checks(workflow):
    _, document = workflow
    commands = "\n".join(step.get("run", "") for step in steps(document))
    for check in ("ruff check", "ruff format --check", "bandit", "pytest"):
        assert check in commands, f"{check} is not run"


def test_dependabot_watches_pip_and_actions(github):
    path = github.root / ".github" / "dependabot.yml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert document["version"] == 2
    ecosystems = {update["package-ecosystem"] for update in document["updates"]}
    assert ecosystems == {"pip", "github-actions"}
    for update in document["updates"]:
        assert update["schedule"]["interval"]
