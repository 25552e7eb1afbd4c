"""scripts/check_no_keys.py, the pre-commit hook that keeps real keys out of git."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from {{ cookiecutter.package_name }} import create_app, keys, registry
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_no_keys.py"


def check(*paths, cwd):
    # -I: isolated mode, as for generate_api_key.py: the script stands on the standard library.
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=30,
    )


def look_alike(key):
    """The key with one checksum character changed: the right shape, a wrong checksum."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def test_find_keys_finds_real_keys_only():
    real, fake = keys.generate_key(), look_alike(keys.generate_key())
    text = f"token={real}\nexample={fake}\n"
    assert list(keys.find_keys(text)) == [real]
    assert not keys.is_well_formed(fake)


def test_secret_committed_to_git_is_refused_by_fingerprint(tmp_path):
    key = keys.generate_key()
    settings = tmp_path / "settings.py"
    settings.write_text(f'"""Settings."""\n\nAPI_KEY = "{key}"\n', encoding="utf-8")
    clean = tmp_path / "clean.txt"
    clean.write_text("nothing to see\n", encoding="utf-8")

    result = check(clean, settings, cwd=tmp_path)

    assert result.returncode == 1
    assert f"{settings}:3:" in result.stdout
    assert keys.fingerprint(key) in result.stdout
    assert str(clean) not in result.stdout
    assert key not in result.stdout + result.stderr, "the scanner printed the key it found"


def test_secret_in_a_binary_file_is_found(tmp_path):
    key = keys.generate_key()
    blob = tmp_path / "dump.bin"
    blob.write_bytes(b"\x00\xff\x10" + key.encode() + b"\x00\n\x89")
    result = check(blob, cwd=tmp_path)
    assert result.returncode == 1
    assert keys.fingerprint(key) in result.stdout


def test_look_alike_with_a_bad_checksum_passes(tmp_path):
    docs = tmp_path / "docs.md"
    docs.write_text(f"Send `X: {look_alike(keys.generate_key())}`\n", encoding="utf-8")
    result = check(docs, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_project_files_that_git_keeps_hold_no_key(tmp_path):
    """.env.example, the README and the code pass the hook (only .env, which git ignores,
    may hold a key)."""
    committed = [ROOT / ".env.example", ROOT / "README.md", *sorted(ROOT.glob("src/**/*.py"))]
    result = check(*committed, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_files_are_skipped(tmp_path):
    """A path that is gone (or a directory) is skipped, not an error."""
    result = check(tmp_path / "deleted.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_data_exposure_a_copy_of_the_database_holds_no_key(tmp_path, make_app, key, registry_key):
    """The registry keeps hashes and metadata only: a backup or a stolen copy of the
    database gives no way to call the API."""
    created, _ = registry_key("partner", owner="acme", scopes=["items:read", "items:write"])
    app = make_app()
    client = app.test_client()
    with create_app({"APP_ENV": "testing"}).app_context():
        rotated, _, _ = registry.rotate("partner", grace=timedelta(days=1), now=datetime.now(UTC))
    app.extensions["api_keys"].refresh()
    for used in (key, created, rotated):
        assert client.get("/v1/whoami", headers={API_KEY_HEADER: used}).status_code == 200
    database = Path("instance/app.db").resolve()

    assert check(database, cwd=tmp_path).returncode == 0

    # The scan reads the database's text: a key written into it is found.
    client.post("/v1/items", json={"name": f"pasted {created}"}, headers={API_KEY_HEADER: key})
    found = check(database, cwd=tmp_path)
    assert found.returncode == 1
    assert keys.fingerprint(created) in found.stdout
