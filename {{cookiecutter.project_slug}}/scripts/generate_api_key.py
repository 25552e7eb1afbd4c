#!/usr/bin/env python3
"""Print a new API key for this project; with --hash, also the sha256: entry to store.

Needs nothing but Python: it loads the project's own keys.py by path (standard
library only), so there is one implementation of the key format, shared with
the server and with project generation.

    python3 scripts/generate_api_key.py          # the key, for the client
    python3 scripts/generate_api_key.py --hash   # the key, then its sha256: entry
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


def main(argv: list[str] | None = None) -> int:
    """Print one key on stdout (and its hash with --hash); nothing else goes to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hash",
        action="store_true",
        help="also print the key's sha256: entry, to put in API_KEYS instead of the key",
    )
    args = parser.parse_args(argv)
    keys = load_keys_module()
    key = keys.generate_key()
    print(key)
    if args.hash:
        print(keys.hashed_entry(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
