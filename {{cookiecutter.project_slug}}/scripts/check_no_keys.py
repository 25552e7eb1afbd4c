#!/usr/bin/env python3
"""Refuse files that hold a real API key of this project (a secret committed to git).

The pre-commit hook ``no-api-keys`` runs it on every staged file. A real key has
this project's prefix, shape and a valid checksum, so a look-alike (an example
in the docs, a test's made-up value) passes. Each finding is reported by file,
line and the key's fingerprint, never by the key itself.

    python3 scripts/check_no_keys.py FILE...

Exit status 1 when a key was found: remove it from the file, and rotate the key
(``flask keys rotate NAME``) if it ever left your machine.

Needs nothing but Python: it loads keys.py by path, like generate_api_key.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "{{ cookiecutter.package_name }}"
KEYS_PY = Path(__file__).resolve().parent.parent / "src" / PACKAGE / "keys.py"


def load_keys_module() -> ModuleType:
    """Import keys.py from its file, without importing the package (and so without Flask)."""
    spec = importlib.util.spec_from_file_location("_project_keys", KEYS_PY)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot load {KEYS_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def findings(path: Path, keys: ModuleType) -> list[tuple[int, str]]:
    """(line number, fingerprint) of each real key in the file; binary files too."""
    # Keys are ASCII: latin-1 reads any bytes, so nothing can hide in a binary file.
    text = path.read_bytes().decode("latin-1")
    return [
        (number, keys.fingerprint(key))
        for number, line in enumerate(text.splitlines(), start=1)
        for key in keys.find_keys(line)
    ]


def main(argv: list[str] | None = None) -> int:
    """Print ``FILE:LINE`` and the fingerprint of each key found; 1 if any, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to check")
    args = parser.parse_args(argv)
    keys = load_keys_module()
    found = 0
    for path in args.files:
        if not path.is_file():  # deleted, or a directory
            continue
        for number, key_fingerprint in findings(path, keys):
            found += 1
            print(f"{path}:{number}: API key (fingerprint {key_fingerprint}) in the file")
    if found:
        print(
            f"{found} API key(s) found. Remove them, keep keys in .env (git-ignored), and "
            "rotate any key that may have been shared: flask keys rotate NAME",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
