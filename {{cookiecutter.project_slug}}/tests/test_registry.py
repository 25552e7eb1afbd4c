"""The key registry file and the live key ring built from it (registry.py).

The file holds hashes and metadata only, is written atomically, and a running
server follows it within a second, keeping the last good version when it breaks.
"""

import logging
import os
import stat
import time
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }} import keys, registry
from {{ cookiecutter.package_name }}.registry import (
    Entry,
    KeyStore,
    RegistryError,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def random_part(key):
    """The secret body of a key: what lies between the prefix and the checksum."""
    return key[len(keys.KEY_PREFIX) + 1 : -keys.CHECKSUM_LENGTH]


def entry(name="svc", key=None, **fields):
    """A registry entry for ``key`` (a new one by default), created at NOW."""
    key = key or keys.generate_key()
    return Entry(name=name, hash=keys.hashed_entry(key), scopes=("*",), created=NOW, **fields)


@pytest.fixture
def registry_logs():
    """Records logged by the registry module (the package logger does not propagate)."""
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger(registry.__name__)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# ---- durations and dates ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("0s", timedelta(0)),
        ("0d", timedelta(0)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_duration_units(text, expected):
    assert registry.parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "d", "90", "1.5d", "-1d", "+1d", "90 d", "1d2h", "10y", "90D", "ninety days"]
)
def test_malformed_duration_is_refused(text):
    with pytest.raises(RegistryError, match="is not a duration like 90d"):
        registry.parse_duration(text)


def test_bare_zero_is_a_duration_for_grace_zero():
    # The SPEC writes `flask keys rotate NAME --grace 0`.
    assert registry.parse_duration("0") == timedelta(0)
    assert registry.parse_duration(" 0 ") == timedelta(0)


def test_absurd_duration_is_a_clear_error():
    with pytest.raises(RegistryError):
        registry.parse_duration("99999999999d")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-31", datetime(2027, 1, 31, tzinfo=UTC)),
        ("2027-01-31T12:00:00", datetime(2027, 1, 31, 12, tzinfo=UTC)),
        ("2027-01-31T12:00:00+02:00", datetime(2027, 1, 31, 10, tzinfo=UTC)),
        ("2027-01-31T12:00:00Z", datetime(2027, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_dates_are_read_as_utc(text, expected):
    parsed = registry.parse_date(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "31/01/2027", "2027-02-30", "tomorrow", "2027-13-01"])
def test_malformed_date_is_refused(text):
    with pytest.raises(RegistryError, match="is not a date like 2027-01-31"):
        registry.parse_date(text)


# ---- create, revoke, rotate -----------------------------------------------------------


def test_create_returns_a_well_formed_key_and_stores_only_its_hash():
    entries = []
    key, new = registry.create(entries, "ci", now=NOW)
    assert keys.is_well_formed(key)
    assert entries == [new]
    assert new.hash == keys.hashed_entry(key)
    assert new.fingerprint == keys.fingerprint(key)
    assert new.created == NOW
    assert new.status(NOW) == "active"


def test_create_without_scope_means_every_scope_and_nothing_more():
    _, default = registry.create([], "ci", now=NOW)
    assert default.scopes == ("*",)
    _, scoped = registry.create([], "ci", scopes=["items:read", "items:read"], now=NOW)
    assert scoped.scopes == ("items:read",)  # no '*' slipped in (privilege escalation)


def test_create_keeps_expiry_and_allowlist():
    _, new = registry.create(
        [],
        "ci",
        expires=NOW + timedelta(days=90),
        allowed_ips=["203.0.113.7/24", "2001:db8::1/32"],
        now=NOW,
    )
    assert new.expires == NOW + timedelta(days=90)
    assert new.allowed_ips == ("203.0.113.0/24", "2001:db8::/32")


def test_duplicate_name_is_refused_and_changes_nothing():
    entries = []
    registry.create(entries, "ci", now=NOW)
    before = list(entries)
    with pytest.raises(RegistryError, match="already exists"):
        registry.create(entries, "ci", now=NOW)
    assert entries == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expires": NOW}, "must be in the future"),
        ({"expires": NOW - timedelta(days=1)}, "must be in the future"),
        ({"scopes": ["items read"]}, "not a valid scope"),
        ({"allowed_ips": ["10.0.0.300"]}, "not an IP address or CIDR"),
        ({"allowed_ips": ["10.0.0.0/33"]}, "not an IP address or CIDR"),
    ],
)
def test_bad_create_is_refused_and_changes_nothing(fields, message):
    entries = []
    with pytest.raises(RegistryError, match=message):
        registry.create(entries, "ci", now=NOW, **fields)
    assert entries == []


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 65, "a/b", "é"])
def test_bad_name_is_refused(name):
    with pytest.raises(RegistryError, match="not a valid key name"):
        registry.create([], name, now=NOW)


def test_revoke_marks_the_key_and_keeps_the_first_revocation_time():
    entries = []
    registry.create(entries, "ci", now=NOW)
    revoked = registry.revoke(entries, "ci", now=NOW + timedelta(hours=1))
    assert revoked.revoked == NOW + timedelta(hours=1)
    assert revoked.status(NOW + timedelta(hours=2)) == "revoked"
    again = registry.revoke(entries, "ci", now=NOW + timedelta(days=3))
    assert again.revoked == NOW + timedelta(hours=1)
    assert revoked.record().revoked is True


def test_revoke_of_an_unknown_name_is_refused():
    with pytest.raises(RegistryError, match="no key named 'ghost'"):
        registry.revoke([], "ghost", now=NOW)


def test_rotate_gives_the_same_rights_to_a_new_key():
    entries = []
    old_key, old = registry.create(
        entries,
        "ci",
        scopes=["items:read", "items:write"],
        expires=NOW + timedelta(days=90),
        allowed_ips=["203.0.113.0/24"],
        now=NOW,
    )
    later = NOW + timedelta(days=1)
    new_key, successor, retired = registry.rotate(entries, "ci", grace=timedelta(days=7), now=later)
    assert keys.is_well_formed(new_key)
    assert new_key != old_key
    assert successor.name == "ci"
    assert successor.hash == keys.hashed_entry(new_key)
    assert successor.created == later
    assert successor.scopes == old.scopes
    assert successor.allowed_ips == old.allowed_ips
    # Same lifetime as the old key, counted from the rotation.
    assert successor.expires == later + (old.expires - old.created)
    assert successor.status(later) == "active"
    # The old key: renamed, marked rotated, alive until the grace period ends.
    assert retired.hash == old.hash
    assert retired.name == f"ci.rotated-{old.fingerprint}"
    assert retired.rotated == later
    assert retired.revoked is None
    assert retired.expires == later + timedelta(days=7)
    assert retired.status(later) == "rotated"
    assert retired.status(later + timedelta(days=7)) == "expired"
    assert entries == [successor, retired]


def test_rotate_never_extends_the_old_keys_life():
    entries = []
    _, old = registry.create(entries, "ci", expires=NOW + timedelta(days=2), now=NOW)
    _, _, retired = registry.rotate(entries, "ci", grace=timedelta(days=7), now=NOW)
    assert retired.expires == old.expires


def test_stale_credential_rotated_with_zero_grace_is_revoked_at_once():
    entries = []
    registry.create(entries, "ci", now=NOW)
    _, _, retired = registry.rotate(entries, "ci", grace=timedelta(0), now=NOW)
    assert retired.revoked == NOW
    assert retired.status(NOW) == "revoked"
    assert retired.record().revoked is True


def test_rotating_twice_keeps_every_name_unique():
    entries = []
    registry.create(entries, "ci", now=NOW)
    registry.rotate(entries, "ci", grace=timedelta(days=1), now=NOW)
    registry.rotate(entries, "ci", grace=timedelta(days=1), now=NOW + timedelta(hours=1))
    names = [item.name for item in entries]
    assert len(names) == len(set(names)) == 3
    assert [item.status(NOW + timedelta(hours=1)) for item in entries] == [
        "active",
        "rotated",
        "rotated",
    ]


@pytest.mark.parametrize("state", ["revoked", "expired", "rotated"])
def test_stale_credential_cannot_be_rotated_back_to_life(state):
    entries = []
    registry.create(entries, "ci", expires=NOW + timedelta(hours=1), now=NOW)
    now = NOW
    if state == "revoked":
        registry.revoke(entries, "ci", now=NOW)
    elif state == "expired":
        now = NOW + timedelta(hours=2)
    else:
        registry.rotate(entries, "ci", grace=timedelta(days=1), now=NOW)
        entries[:] = entries[1:]  # only the retired entry is left, under its new name
    name = entries[0].name
    before = list(entries)
    with pytest.raises(RegistryError, match="only an active key can be rotated"):
        registry.rotate(entries, name, grace=timedelta(days=1), now=now)
    assert entries == before


def test_rotate_of_an_unknown_name_is_refused():
    with pytest.raises(RegistryError, match="no key named 'ghost'"):
        registry.rotate([], "ghost", grace=timedelta(days=1), now=NOW)


def test_rotating_the_longest_name_leaves_a_readable_registry(registry_path):
    longest = "x" * registry.MAX_NEW_NAME_LENGTH
    with registry.editing(registry_path) as entries:
        registry.create(entries, longest, now=NOW)
    with registry.editing(registry_path) as entries:
        registry.rotate(entries, longest, grace=timedelta(days=1), now=NOW)
    assert len(registry.read_entries(registry_path)) == 2


def test_a_new_name_longer_than_a_rotated_one_could_be_is_refused(registry_path):
    with pytest.raises(RegistryError, match="at most"), registry.editing(registry_path) as entries:
        registry.create(entries, "x" * (registry.MAX_NEW_NAME_LENGTH + 1), now=NOW)
    assert not registry_path.exists()


# ---- reading the file -----------------------------------------------------------------


def test_missing_file_is_an_empty_registry(registry_path):
    assert registry.read_entries(registry_path) == ()


def test_entries_survive_a_write_and_a_read(registry_path):
    written = [
        entry("a", expires=NOW + timedelta(days=1), allowed_ips=("10.0.0.0/8", "2001:db8::/32")),
        entry("b", revoked=NOW),
        entry("c", rotated=NOW, expires=NOW + timedelta(hours=1)),
    ]
    registry.write_entries(registry_path, written)
    assert registry.read_entries(registry_path) == tuple(written)


def test_tampered_file_syntax_error_names_file_and_line(registry_path):
    good = entry("a")
    registry.write_entries(registry_path, [good])
    text = registry_path.read_text()
    registry_path.write_text(text + '\n[[keys]]\nname = "b"\nhash = \n')
    bad_line = registry_path.read_text().splitlines().index("hash = ") + 1
    with pytest.raises(RegistryError) as raised:
        registry.read_entries(registry_path)
    message = str(raised.value)
    assert str(registry_path) in message
    assert f"line {bad_line}" in message
    assert good.hash not in message


def valid_table(key):
    digest = keys.hashed_entry(key)
    return (
        f'name = "svc"\nhash = "{digest}"\nfingerprint = "{digest[7:19]}"\n'
        'scopes = ["*"]\ncreated = 2030-06-01T12:00:00Z\n'
    )


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ('hash = "sha256:', 'hash = "sha256:X', "hash must be 'sha256:' and 64"),
        ('hash = "sha256:', 'hash = "md5:', "hash must be 'sha256:' and 64"),
        ('fingerprint = "', 'fingerprint = "0', "fingerprint does not match hash"),
        ("12:00:00Z", "12:00:00", "created must be a date-time with a time zone"),
        ('scopes = ["*"]', 'scopes = ["*"]\nexpires = 2031-01-01', "expires must be a date-time"),
        ('scopes = ["*"]', 'scopes = ["*"]\nallowed_ips = ["10.0.0.300/8"]', "'10.0.0.300/8'"),
        ('scopes = ["*"]', 'scopes = ["not a scope"]', "not a valid scope"),
        ('name = "svc"', 'name = "no spaces"', "not a valid key name"),
    ],
    ids=[
        "bad-hash",
        "other-scheme",
        "fingerprint-mismatch",
        "naive-created",
        "date-not-datetime",
        "bad-cidr",
        "bad-scope",
        "bad-name",
    ],
)
def test_tampered_entry_is_refused_naming_file_and_key(registry_path, replace, by, message):
    good = valid_table(keys.generate_key()).replace('"svc"', '"first"')
    bad = valid_table(keys.generate_key()).replace(replace, by, 1)
    registry_path.write_text(f"[[keys]]\n{good}\n[[keys]]\n{bad}")
    with pytest.raises(RegistryError) as raised:
        registry.read_entries(registry_path)
    text = str(raised.value)
    assert text.startswith(f"{registry_path}: key #2 is invalid: ")
    assert message in text


def test_entry_without_creation_time_is_refused(registry_path):
    registry_path.write_text("[[keys]]\n" + valid_table(keys.generate_key()).split("created")[0])
    with pytest.raises(RegistryError, match="created"):
        registry.read_entries(registry_path)


def test_duplicate_names_in_the_file_are_refused(registry_path):
    text = valid_table(keys.generate_key())
    registry_path.write_text(f"[[keys]]\n{text}\n[[keys]]\n{valid_table(keys.generate_key())}")
    with pytest.raises(RegistryError, match="duplicate key name 'svc'"):
        registry.read_entries(registry_path)


def test_non_utf8_file_is_a_clear_error(registry_path):
    registry_path.write_bytes(b"\xff\xfe[[keys]]\n")
    with pytest.raises(RegistryError, match=str(registry_path)):
        registry.read_entries(registry_path)


# ---- writing the file -----------------------------------------------------------------


def test_registry_file_is_private_and_leaves_no_temporary_file(registry_path):
    registry.write_entries(registry_path, [entry("a")])
    registry.write_entries(registry_path, [entry("a"), entry("b")])
    assert stat.S_IMODE(registry_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in registry_path.parent.iterdir()) == [registry_path.name]
    assert registry_path.read_text().startswith("# API key registry")


def test_registry_file_keeps_the_mode_its_operator_gave_it(registry_path):
    registry.write_entries(registry_path, [entry("a")])
    registry_path.chmod(0o640)  # e.g. readable by the server's group
    registry.write_entries(registry_path, [entry("a"), entry("b")])
    assert stat.S_IMODE(registry_path.stat().st_mode) == 0o640


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(registry_path, monkeypatch):
    registry.write_entries(registry_path, [entry("a")])
    before = registry_path.read_bytes()

    def crash(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.write_entries(registry_path, [entry("a"), entry("b")])
    assert registry_path.read_bytes() == before
    assert [p.name for p in registry_path.parent.iterdir()] == [registry_path.name]


def test_registry_leak_file_holds_no_raw_key(registry_path):
    issued = []
    with registry.editing(registry_path) as entries:
        for name in ("web", "ci", "batch", "partner"):
            issued.append(registry.create(entries, name, scopes=["items:read"], now=NOW)[0])
    with registry.editing(registry_path) as entries:
        issued.append(registry.rotate(entries, "ci", grace=timedelta(days=1), now=NOW)[0])
    everything = "".join(p.read_text() for p in registry_path.parent.iterdir())
    for key in issued:
        assert key not in everything
        assert random_part(key) not in everything
        assert keys.hashed_entry(key) in everything
    assert keys.KEY_PREFIX + "_" not in everything


# ---- editing under a lock ---------------------------------------------------------------


def test_editing_without_the_directory_fails_and_creates_nothing(tmp_path):
    path = tmp_path / "missing" / "api_keys.toml"
    with pytest.raises(RegistryError, match="does not exist"), registry.editing(path) as entries:
        entries.append(entry())
    assert not path.parent.exists()


def test_failure_inside_editing_writes_nothing(registry_path):
    with registry.editing(registry_path) as entries:
        registry.create(entries, "a", now=NOW)
    before = registry_path.read_bytes()
    with pytest.raises(RegistryError), registry.editing(registry_path) as entries:
        registry.create(entries, "b", now=NOW)
        registry.create(entries, "a", now=NOW)  # duplicate: the whole change is dropped
    assert registry_path.read_bytes() == before


def test_failure_inside_editing_creates_no_file(registry_path):
    with pytest.raises(RegistryError), registry.editing(registry_path) as entries:
        registry.create(entries, "a", expires=NOW, now=NOW)
    assert not registry_path.exists()


# ---- the live key ring -----------------------------------------------------------------


def test_key_store_picks_up_a_new_key_and_a_revocation(registry_path):
    store = KeyStore([], registry_path, interval=0)
    with registry.editing(registry_path) as entries:
        new_key, _ = registry.create(entries, "ci", scopes=["items:read"], now=NOW)
    record = store.lookup(new_key)
    assert record is not None
    assert record.name == "ci"
    assert record.scopes == frozenset({"items:read"})
    assert record.revoked is False
    with registry.editing(registry_path) as entries:
        registry.revoke(entries, "ci", now=NOW)
    assert store.lookup(new_key).revoked is True


def test_key_store_checks_the_file_at_most_once_per_interval(registry_path):
    store = KeyStore([], registry_path, interval=0.5)
    with registry.editing(registry_path) as entries:
        new_key, _ = registry.create(entries, "ci", now=NOW)
    assert store.lookup(new_key) is None  # not yet: no stat on every request
    time.sleep(0.6)
    assert store.lookup(new_key) is not None


def test_key_store_keeps_api_keys_next_to_the_registry(registry_path, key):
    store = KeyStore(keys.parse_api_keys(key), registry_path, interval=0)
    with registry.editing(registry_path) as entries:
        new_key, _ = registry.create(entries, "ci", now=NOW)
    assert store.lookup(key).name == "api-keys-1"
    assert store.lookup(new_key).name == "ci"
    assert store.usable_count(NOW) == 2


def test_tampered_file_at_runtime_keeps_the_last_good_ring(registry_path, registry_logs):
    with registry.editing(registry_path) as entries:
        old_key, _ = registry.create(entries, "ci", now=NOW)
    store = KeyStore([], registry_path, interval=0)
    registry_path.write_text(registry_path.read_text() + "\n[[keys]\n")
    assert store.lookup(old_key).name == "ci"
    errors = [r for r in registry_logs if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(registry_path) in errors[0].getMessage()
    assert "line" in errors[0].getMessage()
    # Fixed again: the next change is read as usual.
    registry_path.unlink()
    with registry.editing(registry_path) as entries:
        new_key, _ = registry.create(entries, "web", now=NOW)
    assert store.lookup(new_key).name == "web"
    assert store.lookup(old_key) is None


def test_unreadable_file_at_runtime_keeps_the_last_good_ring(registry_path, registry_logs):
    with registry.editing(registry_path) as entries:
        old_key, _ = registry.create(entries, "ci", now=NOW)
    store = KeyStore([], registry_path, interval=0)
    registry_path.unlink()
    registry_path.mkdir()  # unreadable as a file, even for root
    assert store.lookup(old_key).name == "ci"
    assert [r.levelno for r in registry_logs] == [logging.ERROR]


def test_usable_count_leaves_out_revoked_and_expired_keys(registry_path):
    with registry.editing(registry_path) as entries:
        registry.create(entries, "live", now=NOW)
        registry.create(entries, "gone", now=NOW)
        registry.revoke(entries, "gone", now=NOW)
        registry.create(entries, "old", expires=NOW + timedelta(hours=1), now=NOW)
        registry.create(entries, "moved", now=NOW)
        registry.rotate(entries, "moved", grace=timedelta(days=1), now=NOW)
    store = KeyStore([], registry_path)
    # live, moved (the new key) and moved.rotated-... (in its grace period)
    assert store.usable_count(NOW + timedelta(hours=2)) == 3
