"""The generated README's "Add your own protected route", followed literally.

The code blocks of that section are appended where the README says (the route
and its models to api.py, the test to tests/test_api.py), and nothing else is
edited: the project's linters, its tests (the document checks and the fuzzer
included) and its /openapi.json must all accept the new route.
"""

from __future__ import annotations

import re
import sys

import pytest

from bakery import MATRIX, Baked, output, probe, run, tool

SECTION = "## Add your own protected route"
# The project's tests that a new route touches: its own, the document's, the fuzzer's.
SUITES = ("tests/test_api.py", "tests/test_openapi.py", "tests/test_fuzz.py")


def readme_blocks(project) -> list[str]:
    """The Python code blocks of the README's section, in order."""
    readme = (project / "README.md").read_text(encoding="utf-8")
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def append(path, code: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write("\n\n" + code)


@pytest.fixture(params=["default", "minimal"])
def followed(request, bake, project_copy):
    """A copy of the bake with the README's route and test added as it says."""
    baked: Baked = bake(**MATRIX[request.param])
    project = project_copy(baked)
    route, test = readme_blocks(project)
    append(project / "src" / baked.package / "api.py", route)
    append(project / "tests" / "test_api.py", test)
    return baked, project


def test_the_readme_route_passes_the_linters_with_no_other_edit(followed):
    _, project = followed
    for command in (
        ["ruff", "check", "--no-cache", "."],
        ["ruff", "format", "--check", "--no-cache", "."],
        ["bandit", "-q", "-r", "src", "-c", "pyproject.toml"],
    ):
        result = run([*tool(command[0]), *command[1:]], cwd=project)
        assert result.returncode == 0, (command, output(result))


def test_the_readme_route_passes_the_projects_tests_with_no_other_edit(followed):
    _, project = followed
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *SUITES],
        cwd=project,
        timeout=600,
    )
    assert result.returncode == 0, output(result)
    collected = run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_api.py"],
        cwd=project,
    )
    assert "test_reports_need_a_key_and_a_title" in output(collected)


def test_the_readme_route_documents_itself_with_its_scope(followed):
    baked, project = followed
    document = probe(project, baked.package, "/openapi.json")["/openapi.json"]["json"]
    operation = document["paths"]["/v1/reports"]["post"]
    assert operation["security"] == [{"ApiKey": ["reports:write"]}]
    assert operation["summary"] == "Start a report for the caller."
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body == "#/components/schemas/NewReport"
    title = document["components"]["schemas"]["NewReport"]["properties"]["title"]
    assert (title["minLength"], title["maxLength"]) == (1, 80)
    assert {"201", "401", "403", "422"} <= set(operation["responses"])
