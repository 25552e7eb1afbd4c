"""Bake projects from the template once per option combination and share them.

Every test reaches the template the way a user does: through cookiecutter's own
entry point. A bake is keyed by its answers and made once per session, even
when pytest-xdist spreads the tests over several workers (a file lock guards a
directory that all workers share, as the pytest-xdist documentation shows).
Baked trees are read-only by convention: a test that runs something inside a
project works on its own copy (``project_copy``), which is where a served
project keeps its database. A project that must be installed (its ``flask
keys`` entry point) is installed once per session too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter
from filelock import FileLock

from bakery import (
    MATRIX,
    TEMPLATE_DIR,
    Baked,
    Server,
    answers_for,
    flask_env,
    output,
    run,
    upgrade_database,
)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, request) -> Path:
    """A directory common to every xdist worker of this session (and only this one)."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is <session dir>/popen-gwN.
    return base.parent if hasattr(request.config, "workerinput") else base


@pytest.fixture(scope="session")
def cookiecutter_config(shared_dir) -> Path:
    """A cookiecutter config file of our own: no user defaults, no replay files in $HOME."""
    path = shared_dir / "cookiecutter-config.yaml"
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            path.write_text(
                f"cookiecutters_dir: {json.dumps(str(shared_dir / 'cookiecutters'))}\n"
                f"replay_dir: {json.dumps(str(shared_dir / 'replay'))}\n",
                encoding="utf-8",
            )
    return path


def built_once(directory: Path, build: Callable[[Path], None]) -> Path:
    """``directory``, made by ``build(directory)`` for whichever xdist worker asks first.

    A file lock makes the other workers wait for it; the ``.done`` mark is written
    last, so a build that failed half-way is started again, never reused.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    done = directory / ".done"
    with FileLock(f"{directory}.lock"):
        if not done.is_file():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def bake(shared_dir, cookiecutter_config):
    """``bake(**extra_context)`` -> Baked: generate with these answers, once per session."""

    def _bake(**extra_context: object) -> Baked:
        digest = hashlib.sha256(
            json.dumps(extra_context, sort_keys=True, ensure_ascii=True).encode()
        ).hexdigest()[:16]

        def generate(cache: Path) -> None:
            project = cookiecutter(
                str(TEMPLATE_DIR),
                no_input=True,
                extra_context=extra_context,
                output_dir=str(cache / "out"),
                config_file=str(cookiecutter_config),
            )
            record = {"root": project, "context": answers_for(extra_context)}
            (cache / "bake.json").write_text(json.dumps(record), encoding="utf-8")

        cache = built_once(shared_dir / "bakes" / digest, generate)
        record = json.loads((cache / "bake.json").read_text(encoding="utf-8"))
        return Baked(root=Path(record["root"]), context=record["context"])

    return _bake


@pytest.fixture(params=list(MATRIX))
def baked(request, bake) -> Baked:
    """Each project of the matrix, baked once and shared by every check on it."""
    return bake(**MATRIX[request.param])


@pytest.fixture
def default_project(bake) -> Baked:
    """The project made with every default answer."""
    return bake()


@pytest.fixture
def project_copy(tmp_path):
    """``project_copy(baked)`` -> a private copy of a baked project, free to be written to.

    ``migrated=True``: its database (instance/app.db, the default DATABASE_URL) made
    by the project's real `flask db upgrade`, as a user does before serving, since a
    server never migrates by itself. ``site``: the project's installation (``install``)
    to run it from, rather than its ``src``.
    """
    copies: list[Path] = []

    def _copy(baked: Baked, *, migrated: bool = False, site: Path | None = None) -> Path:
        parent = tmp_path if not copies else tmp_path / f"copy-{len(copies)}"
        target = parent / baked.root.name
        shutil.copytree(baked.root, target, symlinks=True)
        copies.append(target)
        if migrated:
            upgrade_database(target, flask_env(baked.package, site or "src"))
        return target

    return _copy


@pytest.fixture(scope="session")
def install(shared_dir):
    """``install(baked)`` -> a directory for PYTHONPATH holding the project, installed once.

    ``pip install --target`` (no dependencies: this interpreter has them) writes
    the package and its metadata, so entry points such as the ``flask keys``
    command plugin work. pip builds in the source tree, so it builds a copy.
    """

    def _install(baked: Baked) -> Path:
        digest = hashlib.sha256(str(baked.root).encode()).hexdigest()[:16]

        def pip_install(cache: Path) -> None:
            source = cache / "source"
            shutil.copytree(baked.root, source, symlinks=True)
            result = run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--quiet",
                    "--target",
                    str(cache / "site"),
                    str(source),
                ]
            )
            assert result.returncode == 0, output(result)

        return built_once(shared_dir / "installs" / digest, pip_install) / "site"

    return _install


@pytest.fixture
def start(tmp_path):
    """``start(command, cwd, env)`` -> Server; every server is stopped at teardown."""
    servers: list[Server] = []

    def _start(command: list[str], cwd: Path, env: dict[str, str]) -> Server:
        server = Server(command, cwd, env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


# ---- PostgreSQL (tests/postgres.py) ------------------------------------------------------
# A real server per pytest process, made when a test of that process first asks for it
# and removed when the process ends. No PostgreSQL: a loud skip, or a failure in CI.


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """The PostgreSQL server of this pytest process (see tests/postgres.py)."""
    from postgres import PostgresServer

    server = PostgresServer.create()
    yield server
    server.destroy(keep_log=tmp_path_factory.getbasetemp() / "postgresql.log")


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """``postgresql+psycopg://user:password@127.0.0.1:port/db``: a database and role of its own."""
    return postgres_server.url


# ---- end of PostgreSQL --------------------------------------------------------------------
