"""Finish the generated project: drop what was not chosen, write .env with a first key.

Standard library only. The key is made by the project's own
scripts/generate_api_key.py (one implementation of the key format) and goes
straight into .env; it is never rendered into this hook's text, which
cookiecutter leaves behind in a temporary directory.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Paths that exist only for an option; removed when the option is off.
OPTIONAL_PATHS = {
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


def remove_unused(answers, root):
    """Delete the files of every option that was turned off."""
    enabled = {
        "use_docker": answers["use_docker"],
        "use_rate_limiting": answers["use_rate_limiting"],
        "use_docs_page": answers["use_docs_page"],
        "use_secret_scanning": answers["use_secret_scanning"],
        "ci": answers["ci"] != "none",
    }
    for option, paths in OPTIONAL_PATHS.items():
        if enabled[option]:
            continue
        for relative in paths:
            path = root / relative.format(package=answers["package_name"])
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def write_env(root):
    """Create .env (mode 0600) with a fresh key, unless one is already there.

    Returns True when a new file was written. An existing .env is left alone so
    that re-generation or ``cruft update`` never churns a working secret.
    """
    env_path = root / ".env"
    if env_path.exists():
        return False
    result = subprocess.run(  # noqa: S603 - our own script, run by this interpreter
        [sys.executable, str(root / "scripts" / "generate_api_key.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    key = result.stdout.strip()
    content = (
        "# Local development settings, read by `flask run` and `flask keys`.\n"
        "# Holds a secret: git-ignored, never commit it or copy it into an image.\n"
        "APP_ENV=development\n"
        f"API_KEYS={key}\n"
    )
    # O_EXCL: never follow or clobber a file that appeared meanwhile; 0600: owner only.
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(content)
    return True


def is_scratch_render(answers, root):
    """True when cruft renders the template only to compute a diff, then deletes it.

    ``cruft update`` and ``cruft diff`` render the old and the new template into
    fresh temporary directories (``tempfile.TemporaryDirectory``) by calling
    cookiecutter's ``generate_files`` themselves: the answers carry cruft's
    ``_commit`` but not the ``_output_dir`` that cookiecutter's own entry point
    adds. A summary printed there would point the user at directories that are
    already gone.
    """
    if "_commit" not in answers or "_output_dir" in answers:
        return False
    parent = root.resolve().parent
    scratch = Path(tempfile.gettempdir()).resolve()
    return parent.parent == scratch and parent.name.startswith(tempfile.gettempprefix())


def where_to_cd(root):
    """The project directory as the user would type it: relative to where they ran
    cookiecutter when it lies below, absolute otherwise."""
    here = os.environ.get("PWD", "")
    if here and root.is_relative_to(here):
        return str(root.relative_to(here))
    return str(root)


def summary(answers, root, wrote_env):
    """A few aligned lines: what was made, where the key is, the next commands; never the key."""
    rows = [
        ("Created", answers["project_name"]),
        ("In", str(root)),
        (
            "API key",
            "written to .env (mode 0600, git-ignored)"
            if wrote_env
            else "kept: .env already existed",
        ),
    ]
    if answers["use_docs_page"]:
        rows.append(("API docs", "http://127.0.0.1:5000/docs once it runs"))
    read_key = "$(sed -n 's/^API_KEYS=//p' .env)"
    curl = f'curl -H "{answers["api_key_header"]}: {read_key}" http://127.0.0.1:5000/v1/whoami'
    return "\n".join(
        [
            "",
            *(f"  {label:<10}{value}" for label, value in rows),
            "",
            "  Next:",
            f"    cd {shlex.quote(where_to_cd(root))}",
            "    make install   # .venv with the project and its dev tools",
            "    make run       # migrates the database, serves http://127.0.0.1:5000",
            "",
            "  Then, in another terminal:",
            f"    {curl}",
            "",
            "  Port 5000 taken (on macOS, by AirPlay)? FLASK_RUN_PORT=5001 make run",
            "",
        ]
    )


def main():
    """Tidy the project, write its .env and tell the user what to do next.

    A render that cruft throws away gets the same files (its diff must match a
    real generation) but no summary.
    """
    root = Path.cwd()
    remove_unused(ANSWERS, root)
    wrote_env = write_env(root)
    if not is_scratch_render(ANSWERS, root):
        print(summary(ANSWERS, root, wrote_env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
