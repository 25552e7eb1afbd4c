"""The generated project at two commits of the template, served side by side (run.py's
``--before REF --after REF``).

Each ref's template is taken from git (``git archive REF``) into the run's directory,
baked with ``cookiecutter --no-input``, installed, migrated by its own ``flask db
upgrade`` and keyed through ``API_KEYS`` (every scope), as run.py does with the
default project; gunicorn serves it as its README says, with the workers its
``gunicorn.conf.py`` asks for. wrk then sends ``POST /v1/items`` (one new item a
request) and ``GET /v1/items`` (a full page) to both, in the same rounds. Then, the
servers stopped, each side's WSGI app from create_app() is called directly on the same
routes (inprocess_items.py), the two sides alternating batch by batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import servers
from bakes import Project, bake, install, new_key, upgrade
from servers import Run

HERE = Path(__file__).resolve().parent

ITEMS = "/v1/items"
NEW_ITEM = {"name": "an item from the benchmark"}
PAGE = 50  # the default page size: items made before the runs, so GET answers a full page
ROUTES = ["post", "get"]  # in process: the commands inprocess_items.py takes


@dataclass
class Side:
    """One ref's project, baked, installed, migrated and keyed."""

    label: str  # "before" or "after"
    commit: str  # the ref as a short commit id, for the table
    project: Project
    key: str
    env: dict[str, str]  # its production settings, API_KEYS and DATABASE_URL included
    directory: Path  # its own in the run's directory: template, bake, logs


@dataclass
class Served:
    """One ref's project under gunicorn: what wrk needs to reach it."""

    label: str  # "before" or "after"
    commit: str  # the ref as a short commit id, for the table
    base: str
    headers: dict[str, str]
    settings: str  # the workers, as gunicorn resolved them


def commit_of(template: Path, ref: str) -> str:
    result = subprocess.run(  # noqa: S603 - git, fixed arguments
        ["git", "-C", str(template), "rev-parse", "--short", f"{ref}^{{commit}}"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{ref!r} is not a commit of {template}: {result.stderr.strip()}")
    return result.stdout.strip()


def export(template: Path, ref: str, target: Path) -> Path:
    """The template's files at ``ref``, as git has them, in ``target``."""
    result = subprocess.run(  # noqa: S603 - git, fixed arguments
        ["git", "-C", str(template), "archive", "--format=tar", ref],  # noqa: S607
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"git archive {ref} failed: {result.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        archive.extractall(target, filter="data")
    return target


def post(url: str, headers: dict[str, str], body: dict) -> int:
    """The status of one POST of ``body`` as JSON."""
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        url,
        data=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def post_script(work: Path) -> Path:
    """wrk's Lua script for ``POST /v1/items`` with a JSON body."""
    script = work / "post-item.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(NEW_ITEM))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n',
        encoding="utf-8",
    )
    return script


def prepare(template: Path, label: str, ref: str, work: Path, env: dict[str, str]) -> Side:
    """Bake, install, migrate and key the template at ``ref``.

    ``env``: the server's settings (run.py's production ones, with DATABASE_URL when
    the run has a PostgreSQL server); the key is added here.
    """
    commit = commit_of(template, ref)
    directory = work / f"ref-{label}"
    directory.mkdir()
    project: Project = bake(export(template, ref, directory / "template"), directory)
    project = install(project, directory)
    key, entry = new_key(project)
    env = {**env, "API_KEYS": entry}
    upgrade(project, env)
    return Side(label, commit, project, key, env, directory)


def serve(side: Side, stack) -> Served:
    """gunicorn serving the side's project, stopped with ``stack``, and 50 items made
    through the API, so that ``GET /v1/items`` answers a full page."""
    project = side.project
    app = f"{project.package}:create_app()"
    settings, _ = servers.gunicorn_settings(app, project.root, side.env)
    process, base = servers.gunicorn(app, project.root, side.env, side.directory / "gunicorn.log")
    stack.callback(process.stop)
    headers = {"X-Forwarded-Proto": "https", project.key_header: side.key}
    for _ in range(PAGE):
        status = post(base + ITEMS, headers, NEW_ITEM)
        if status != 201:
            raise RuntimeError(f"{side.label} ({side.commit}): POST {ITEMS} answered {status}")
    status = servers.get(base + ITEMS, headers)
    if status != 200:
        raise RuntimeError(f"{side.label} ({side.commit}): GET {ITEMS} answered {status}")
    return Served(side.label, side.commit, base, headers, settings)


class InProcess:
    """One side's app in a process of its own (inprocess_items.py), a batch per command."""

    def __init__(self, side: Side, batch: int, stack) -> None:
        self.side = side
        command = [sys.executable, str(HERE / "inprocess_items.py"), side.project.package]
        log = (side.directory / "inprocess.log").open("w", encoding="utf-8")
        stack.callback(log.close)
        self.process = subprocess.Popen(  # noqa: S603 - our script, fixed arguments
            [*command, side.project.key_header, str(batch)],
            cwd=side.project.root,
            env=side.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        stack.callback(self.stop)
        self.process.stdin.write(side.key + "\n")
        self.process.stdin.flush()

    def batch(self, route: str) -> Run:
        """A batch of requests to ``route`` (``post`` or ``get``), timed one by one."""
        self.process.stdin.write(route + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            log = (self.side.directory / "inprocess.log").read_text(errors="replace")
            raise RuntimeError(f"{self.side.label} ({self.side.commit}) in process:\n{log[-3000:]}")
        return Run(**json.loads(answer))

    def stop(self) -> None:
        """Its stdin closed, it ends by itself; it is ended only if it does not."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def in_process(sides: list[Side], rounds: int, batch: int, progress) -> dict[str, list[Run]]:
    """Both sides' apps in process, interleaved: each round takes the routes in a new random
    order and, for each route, the two sides in a new random order, back to back, so
    that a round's ratio compares batches run seconds apart."""
    pick = secrets.SystemRandom()
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        apps = [InProcess(side, batch, stack) for side in sides]
        for number in range(rounds):
            if number % 10 == 0:
                progress(f"refs in process: round {number + 1} of {rounds}")
            for route in pick.sample(ROUTES, len(ROUTES)):
                for app in pick.sample(apps, len(apps)):
                    name = f"inprocess {route} {app.side.label}"
                    results.setdefault(name, []).append(app.batch(route))
    return results


def compare(template: Path, before: str, after: str, work: Path, envs: dict, rounds_of, inproc):
    """Both refs served at once, wrk on both routes of both in the same rounds; then, the
    servers stopped, both apps in process (``inproc(sides)``: run.py's rounds and batch).

    ``envs``: each label's server settings; ``rounds_of(variants)``: run.py's rounds.
    Returns the runs by variant (``refs post before``, ``inprocess post before``, ...)
    and each side's commit and workers.
    """
    script = post_script(work)
    sides = [
        prepare(template, label, ref, work, envs[label])
        for label, ref in (("before", before), ("after", after))
    ]
    with contextlib.ExitStack() as stack:
        served = [serve(side, stack) for side in sides]
        variants = {}
        for side in served:
            variants[f"refs post {side.label}"] = (side.base + ITEMS, side.headers, script)
            variants[f"refs get {side.label}"] = (side.base + ITEMS, side.headers)
        results = rounds_of(variants)
    results |= inproc(sides)
    return results, {side.label: (side.commit, side.settings) for side in served}
