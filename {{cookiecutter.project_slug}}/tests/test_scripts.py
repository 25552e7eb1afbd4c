"""scripts/generate_api_key.py runs with nothing but Python and prints a usable key."""

import subprocess
import sys
from pathlib import Path

from {{ cookiecutter.package_name }} import keys

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "generate_api_key.py"


def generate(*arguments, cwd):
    # -I: isolated mode ignores PYTHONPATH and user site-packages, so neither this
    # project nor Flask can be imported: the script must stand on the standard library.
    result = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        timeout=30,
    )
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_prints_one_well_formed_key(tmp_path):
    lines = generate(cwd=tmp_path)
    assert len(lines) == 1
    assert lines[0].startswith(keys.KEY_PREFIX + "_")
    assert keys.is_well_formed(lines[0])


def test_hash_prints_the_key_then_its_entry(tmp_path):
    key, entry = generate("--hash", cwd=tmp_path)
    assert keys.is_well_formed(key)
    assert entry == "sha256:" + keys.hash_key(key)
    assert keys.KeyRing(keys.parse_api_keys(entry)).lookup(key) is not None


def test_predictable_keys_two_runs_differ(tmp_path):
    assert generate(cwd=tmp_path) != generate(cwd=tmp_path)


def test_rejects_unknown_arguments(tmp_path):
    result = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), "--bogus"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode != 0
    assert result.stdout == ""
