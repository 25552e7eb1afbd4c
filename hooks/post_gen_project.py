"""Finish the generated project: drop what was not chosen, write .env with a first key.

Standard library only. The key is made by the project's own
scripts/generate_api_key.py (one implementation of the key format) and goes
straight into .env; it is never rendered into this hook's text, which
cookiecutter leaves behind in a temporary directory.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Paths that exist only for an option; removed when the option is off.
OPTIONAL_PATHS = {
    "use_docker": ["Dockerfile", ".dockerignore"],
    "ci": [".github"],
}


def remove_unused(answers, root):
    """Delete the files of every option that was turned off."""
    enabled = {"use_docker": answers["use_docker"], "ci": answers["ci"] != "none"}
    for option, paths in OPTIONAL_PATHS.items():
        if enabled[option]:
            continue
        for relative in paths:
            path = root / relative
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


def summary(answers, root, wrote_env):
    """The few lines a person needs next: what was made, where the key is, what to run."""
    key_line = (
        "written to .env (mode 0600, git-ignored)" if wrote_env else "kept: .env already existed"
    )
    return "\n".join(
        [
            "",
            f"  Created    {answers['project_name']} in {root}",
            f"  Package    src/{answers['package_name']}",
            f"  API key    {key_line}",
            "",
            "  Next:",
            f"    cd {answers['project_slug']}",
            "    python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'",
            "    .venv/bin/flask run",
            "",
            "  Then, in another terminal:",
            f"    curl -H \"{answers['api_key_header']}: $(sed -n 's/^API_KEYS=//p' .env)\" "
            "http://127.0.0.1:5000/v1/whoami",
            "",
        ]
    )


def main():
    """Tidy the project, write its .env and tell the user what to do next."""
    root = Path.cwd()
    remove_unused(ANSWERS, root)
    wrote_env = write_env(root)
    print(summary(ANSWERS, root, wrote_env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
