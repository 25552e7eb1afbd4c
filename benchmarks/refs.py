"""The generated project at two commits of the template, served side by side (run.py's
``--before REF --after REF``).

Each ref's template is taken from git (``git archive REF``) into the run's directory,
baked with ``cookiecutter --no-input``, installed, migrated by its own ``flask db
upgrade`` and keyed through ``API_KEYS`` (every scope), as run.py does with the
default project; gunicorn serves it as its README says, with the workers its
``gunicorn.conf.py`` asks for. wrk then sends ``POST /v1/items`` (one new item a
request) and ``GET /v1/items`` (a full page) to both, in the same rounds.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import servers
from bakes import Project, bake, install, new_key, upgrade

ITEMS = "/v1/items"
NEW_ITEM = {"name": "an item from the benchmark"}
PAGE = 50  # the default page size: items made before the runs, so GET answers a full page


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


def serve_ref(
    template: Path, label: str, ref: str, work: Path, env: dict[str, str], stack
) -> Served:
    """Bake, install, migrate, key and serve the template at ``ref``; stopped with ``stack``.

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
    app = f"{project.package}:create_app()"
    settings, _ = servers.gunicorn_settings(app, project.root, env)
    process, base = servers.gunicorn(app, project.root, env, directory / "gunicorn.log")
    stack.callback(process.stop)
    headers = {"X-Forwarded-Proto": "https", project.key_header: key}
    for _ in range(PAGE):
        status = post(base + ITEMS, headers, NEW_ITEM)
        if status != 201:
            raise RuntimeError(f"{label} ({commit}): POST {ITEMS} answered {status}")
    status = servers.get(base + ITEMS, headers)
    if status != 200:
        raise RuntimeError(f"{label} ({commit}): GET {ITEMS} answered {status}")
    return Served(label, commit, base, headers, settings)


def compare(template: Path, before: str, after: str, work: Path, envs: dict, rounds_of):
    """Both refs served at once, wrk on both routes of both in the same rounds.

    ``envs``: each label's server settings; ``rounds_of(variants)``: run.py's rounds.
    Returns the runs by variant (``refs post before``, ...) and each side's commit and
    workers.
    """
    script = post_script(work)
    with contextlib.ExitStack() as stack:
        served = [
            serve_ref(template, label, ref, work, envs[label], stack)
            for label, ref in (("before", before), ("after", after))
        ]
        variants = {}
        for side in served:
            variants[f"refs post {side.label}"] = (side.base + ITEMS, side.headers, script)
            variants[f"refs get {side.label}"] = (side.base + ITEMS, side.headers)
        results = rounds_of(variants)
    return results, {side.label: (side.commit, side.settings) for side in served}
