"""The hooks as functions, in process, as cookiecutter-pypackage tests its own.

Each hook is rendered the way cookiecutter renders it (its own Jinja
environment, a ``cookiecutter`` context of answers), written to a file and
imported; the tests then call its functions. tests/test_hooks.py runs the same
hooks through the real command line.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from cookiecutter.utils import create_env_with_context

from bakery import MATRIX, TEMPLATE_DIR, Baked, answers_for, load_keys_module, read_env_file

HOOKS_DIR = TEMPLATE_DIR / "hooks"


def render_hook(name: str, answers: dict[str, object], directory: Path) -> ModuleType:
    """hooks/<name>.py rendered with ``answers`` and imported from ``directory``.

    Rendered as cookiecutter's hooks.run_script_with_context does; the module is
    not put in sys.modules, so every test gets its own.
    """
    context = {"cookiecutter": answers}
    source = (HOOKS_DIR / f"{name}.py").read_text(encoding="utf-8")
    path = directory / f"{name}.py"
    path.write_text(create_env_with_context(context).from_string(source).render(**context))
    spec = importlib.util.spec_from_file_location(f"_rendered_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hook(tmp_path):
    """``hook(name, **answers)``: the rendered hook, for the defaults changed by ``answers``.

    Answers are given as they reach the hook, after cookiecutter derived the
    slug, package and prefix: only the answer under test differs from a good set.
    """
    directory = tmp_path / "hooks"
    directory.mkdir()

    def _hook(name: str, **answers: object) -> ModuleType:
        return render_hook(name, {**answers_for({}), **answers}, directory)

    return _hook


# pre_gen_project.py

# (variable, bad value, words the one ERROR line must hold)
BAD_ANSWERS = [
    ("project_name", "Two\nLines", "control characters"),
    ("project_name", "   ", "must not be empty"),
    ("description", "carriage\rreturn", "control characters"),
    ("author_name", "tab\there", "control characters"),
    ("author_email", "nul\x00byte", "control characters"),
    ("project_slug", "9lives", "lower-case letter"),
    ("project_slug", "Bad_Slug", "lower-case letter"),
    ("project_slug", "-x", "lower-case letter"),
    ("project_slug", "ends-with-", "lower-case letter"),
    ("project_slug", "a", "lower-case letter"),
    ("project_slug", "a" * 51, "at most 50"),
    ("package_name", "Has-Dash", "Python identifier"),
    ("package_name", "Ünï", "Python identifier"),
    ("package_name", "2fast", "Python identifier"),
    ("package_name", "class", "keyword"),
    ("package_name", "match", "keyword"),
    ("package_name", "json", "shadow"),
    ("package_name", "flask", "shadow"),
    ("package_name", "gunicorn", "shadow"),
    ("key_prefix", "a", "2-16 characters"),
    ("key_prefix", "a" * 17, "2-16 characters"),
    ("key_prefix", "Abc", "lower-case letter"),
    ("key_prefix", "1abc", "lower-case letter"),
    ("key_prefix", "ab_c", "letters or digits"),
    ("api_key_header", "X API Key", "RFC 9110 token"),
    ("api_key_header", "X-Key:", "RFC 9110 token"),
    ("api_key_header", "", "RFC 9110 token"),
    ("api_key_header", "Content-Length", "already has a meaning"),
    ("api_key_header", "authorization", "already has a meaning"),
    ("api_key_header", "X-Forwarded-For", "already has a meaning"),
    ("version", "one", "PEP 440"),
    ("version", "1.0-beta", "PEP 440"),
    ("version", "v1.0", "PEP 440"),
    ("use_rate_limiting", "yes please", "true or false"),
    ("use_docker", "maybe", "true or false"),
    ("use_docs_page", 1, "true or false"),
    ("use_secret_scanning", "no", "true or false"),
    ("ci", "jenkins", "one of github, none"),
    ("license", "GPL-3.0", "one of MIT, Apache-2.0, BSD-3-Clause, Proprietary"),
]

# Answers on the edge of a rule, which must be accepted.
GOOD_ANSWERS = [
    ("project_name", 'Zoë\'s "Quoted" \\ API'),
    ("project_name", '"""; import os; os.system("true"); """'),
    ("description", "Ends with a backslash \\"),
    ("project_slug", "ab"),
    ("project_slug", "a" * 50),
    ("project_slug", "a-1"),
    ("project_slug", "x9"),
    ("package_name", "_private"),
    ("package_name", "a"),
    ("package_name", "my_api_2"),
    ("package_name", "jsonapi"),
    ("package_name", "flask_app"),
    ("key_prefix", "ab"),
    ("key_prefix", "a" * 16),
    ("key_prefix", "k9"),
    ("api_key_header", "X-API-Key"),
    ("api_key_header", "Api-Token"),
    ("api_key_header", "X!#$%&'*+.^_`|~9"),
    ("version", "0"),
    ("version", "1.0"),
    ("version", "2.0.0rc1"),
    ("version", "1.0.post1.dev2"),
    ("use_rate_limiting", False),
    ("use_docker", False),
    ("use_docs_page", False),
    ("use_secret_scanning", True),
    ("ci", "none"),
    ("license", "Proprietary"),
    ("license", "BSD-3-Clause"),
]


@pytest.mark.parametrize(("variable", "value", "words"), BAD_ANSWERS, ids=repr)
def test_pre_gen_refuses_a_bad_answer_in_one_line(hook, capsys, variable, value, words):
    """Exit status 1 and exactly one ``ERROR: <variable> ...`` line on stderr, naming the rule."""
    pre_gen = hook("pre_gen_project", **{variable: value})
    assert len(list(pre_gen.problems(pre_gen.ANSWERS))) == 1, "one bad answer, one problem"
    assert pre_gen.main() == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"ERROR: {variable} "), line
    assert words in line


@pytest.mark.parametrize(("variable", "value"), GOOD_ANSWERS, ids=repr)
def test_pre_gen_accepts_a_good_answer_on_the_edge(hook, capsys, variable, value):
    pre_gen = hook("pre_gen_project", **{variable: value})
    assert pre_gen.main() == 0, capsys.readouterr().err
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name", list(MATRIX))
def test_pre_gen_accepts_every_matrix_bake(tmp_path, name):
    """The answers the template tests bake with are all valid (a rule too strict fails here)."""
    pre_gen = render_hook("pre_gen_project", answers_for(MATRIX[name]), tmp_path)
    assert list(pre_gen.problems(pre_gen.ANSWERS)) == []


def test_pre_gen_reports_only_the_first_of_several_problems(hook, capsys):
    pre_gen = hook("pre_gen_project", project_slug="Bad Slug", key_prefix="X", version="one")
    assert len(list(pre_gen.problems(pre_gen.ANSWERS))) == 3
    assert pre_gen.main() == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ERROR: project_slug ")


def test_hostile_answer_is_data_in_the_rendered_hook(hook):
    """A quote-and-backslash name is read back intact: tojson keeps it out of the hook's code."""
    name = "\"\"\"'''; raise SystemExit(3) # \\"
    for name_of_hook in ("pre_gen_project", "post_gen_project"):
        assert hook(name_of_hook, project_name=name).ANSWERS["project_name"] == name


# post_gen_project.py

# What each option, turned off, must take away (paths relative to the project;
# {package} is the package directory's name).
REMOVED_WHEN_OFF = {
    "use_docker": ["Dockerfile", ".dockerignore", "compose.yaml"],
    "use_rate_limiting": [
        "src/{package}/ratelimit.py",
        "src/{package}/migrations/versions/0002_owner_limits.py",
        "tests/test_ratelimit.py",
        "tests/test_owner_limits.py",
    ],
    "use_docs_page": [
        "src/{package}/docs.py",
        "src/{package}/templates",
        "src/{package}/static",
        "tests/test_docs.py",
    ],
    "use_secret_scanning": ["src/{package}/secret_scanning.py", "tests/test_secret_scanning.py"],
    "ci": [".github"],
}
OFF = {
    "use_docker": False,
    "use_rate_limiting": False,
    "use_docs_page": False,
    "use_secret_scanning": False,
    "ci": "none",
}
# The answers, beyond the defaults, that turn every option on.
EVERY_OPTION_ON = {"use_secret_scanning": True}


def tree(root: Path) -> set[str]:
    """Every file below ``root``, as a relative path."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


@pytest.fixture
def full_bake(bake) -> Baked:
    """The project made with every option on."""
    return bake(**EVERY_OPTION_ON)


@pytest.fixture
def full_project(full_bake: Baked, project_copy) -> Path:
    """A private copy of the project with every option on, as rendered before the hook."""
    return project_copy(full_bake)


@pytest.mark.parametrize("option", list(REMOVED_WHEN_OFF))
def test_post_gen_removes_exactly_the_files_of_an_option_turned_off(
    hook, full_project, full_bake, option
):
    post_gen = hook("post_gen_project", **{**EVERY_OPTION_ON, option: OFF[option]})
    removed = [path.format(package=full_bake.package) for path in REMOVED_WHEN_OFF[option]]
    before = tree(full_project)
    for path in removed:
        assert (full_project / path).exists(), f"{path}: not in a full project (renamed?)"
    post_gen.remove_unused(post_gen.ANSWERS, full_project)
    kept = {
        path for path in before if not any(path == r or path.startswith(f"{r}/") for r in removed)
    }
    assert tree(full_project) == kept


def test_post_gen_keeps_everything_when_every_option_is_on(hook, full_project):
    post_gen = hook("post_gen_project", **EVERY_OPTION_ON)
    before = tree(full_project)
    post_gen.remove_unused(post_gen.ANSWERS, full_project)
    assert tree(full_project) == before


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_post_gen_writes_a_first_key_to_an_owner_only_env(hook, full_project, umask):
    """.env: mode 0600 whatever the umask, APP_ENV=development and one well-formed key."""
    (full_project / ".env").unlink()
    post_gen = hook("post_gen_project")
    previous = os.umask(umask)
    try:
        assert post_gen.write_env(full_project) is True
    finally:
        os.umask(previous)
    env_file = full_project / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert set(values) == {"APP_ENV", "API_KEYS"}
    assert values["APP_ENV"] == "development"
    assert load_keys_module(full_project).is_well_formed(values["API_KEYS"])


def test_post_gen_never_overwrites_an_existing_env(hook, full_project):
    env_file = full_project / ".env"
    env_file.write_text("API_KEYS=mine\n", encoding="utf-8")
    env_file.chmod(0o640)
    post_gen = hook("post_gen_project")
    assert post_gen.write_env(full_project) is False
    assert env_file.read_text(encoding="utf-8") == "API_KEYS=mine\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640


def test_post_gen_main_tidies_writes_the_key_and_says_where(
    hook, full_project, monkeypatch, capsys
):
    """A normal generation: files of disabled options gone, .env written, a summary without
    the key, with the next commands and how to pick another port."""
    (full_project / ".env").unlink()
    post_gen = hook("post_gen_project", use_docker=False, _output_dir=str(full_project.parent))
    monkeypatch.chdir(full_project)
    monkeypatch.setenv("PWD", str(full_project.parent))
    assert post_gen.main() == 0
    assert not (full_project / "Dockerfile").exists()
    key = read_env_file(full_project / ".env")["API_KEYS"]
    out = capsys.readouterr().out
    assert key not in out
    assert "written to .env" in out
    assert f"cd {full_project.name}\n" in out
    assert "FLASK_RUN_PORT=5001 make run" in out
    # Run again over the same project: the key stays, and the summary says so.
    assert post_gen.main() == 0
    assert read_env_file(full_project / ".env")["API_KEYS"] == key
    assert "kept: .env already existed" in capsys.readouterr().out


def test_post_gen_summary_follows_the_answers(hook, tmp_path, monkeypatch):
    """The curl line uses the project's header; /docs only when the page exists; the cd is
    relative below the user's directory, absolute elsewhere, and quoted for the shell."""
    monkeypatch.setenv("PWD", str(tmp_path))
    with_docs = hook("post_gen_project", api_key_header="Api-Token")
    root = tmp_path / "out" / "it's here"
    text = with_docs.summary(with_docs.ANSWERS, root, True)
    assert 'curl -H "Api-Token: ' in text
    assert "/docs" in text
    assert "cd 'out/it'\"'\"'s here'" in text
    without_docs = hook("post_gen_project", use_docs_page=False)
    elsewhere = Path("/srv/api")
    text = without_docs.summary(without_docs.ANSWERS, elsewhere, False)
    assert "/docs" not in text
    assert "cd /srv/api\n" in text


@pytest.fixture
def scratch_render(full_project):
    """The project moved where ``cruft update`` renders: <fresh temp dir>/<slug>."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / full_project.name
        shutil.move(full_project, root)
        yield root


CRUFT_ANSWERS = {"_template": "/templates/flask-apikey", "_commit": "0" * 40}


def test_post_gen_is_quiet_in_the_renders_cruft_throws_away(
    hook, scratch_render, monkeypatch, capsys
):
    """cruft update's temporary renders: same files as a real generation, but no summary."""
    (scratch_render / ".env").unlink()
    post_gen = hook("post_gen_project", use_docker=False, **CRUFT_ANSWERS)
    assert post_gen.is_scratch_render(post_gen.ANSWERS, scratch_render)
    monkeypatch.chdir(scratch_render)
    assert post_gen.main() == 0
    assert capsys.readouterr().out == ""
    assert (scratch_render / ".env").is_file()
    assert not (scratch_render / "Dockerfile").exists()


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param({"_output_dir": "/somewhere"}, id="cookiecutter-entry-point"),
        pytest.param({**CRUFT_ANSWERS, "_output_dir": "/somewhere"}, id="cookiecutter-and-git"),
    ],
)
def test_post_gen_speaks_when_cookiecutter_itself_generates_into_a_temp_dir(
    hook, scratch_render, answers
):
    """`cookiecutter -o "$(mktemp -d)"` is a real generation: the summary is printed."""
    post_gen = hook("post_gen_project", **answers)
    assert not post_gen.is_scratch_render(post_gen.ANSWERS, scratch_render)


def test_post_gen_speaks_for_cruft_create(hook, full_project):
    """`cruft create` (cruft's answers, no _output_dir) into the user's directory: printed."""
    post_gen = hook("post_gen_project", **CRUFT_ANSWERS)
    assert not post_gen.is_scratch_render(post_gen.ANSWERS, full_project)
