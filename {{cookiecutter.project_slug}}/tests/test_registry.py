"""The key registry in the database (registry.py): its validators, and create, rotate,
revoke and list as ``flask keys`` and any route of yours call them.

The database holds hashes and metadata only; every change bumps the registry's
version once, and each row carries the version of its last change, so that a
server reads only what changed (tests/test_keystore.py).
"""

from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from {{ cookiecutter.package_name }} import create_app, keys, registry
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import ApiKey, RegistryVersion
from {{ cookiecutter.package_name }}.registry import KeyStatus, RegistryError

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def database():
    """An app context on this test's own migrated database (instance/app.db)."""
    with create_app({"APP_ENV": "testing"}).app_context():
        yield
        db.session.rollback()


def random_part(key):
    """The secret body of a key: what lies between the prefix and the checksum."""
    return key[len(keys.KEY_PREFIX) + 1 : -keys.CHECKSUM_LENGTH]


def version():
    return db.session.scalar(select(RegistryVersion.version))


def snapshot():
    """The registry as the database holds it: its version and every column of every row."""
    rows = db.session.execute(select(ApiKey.__table__).order_by("id")).all()
    return version(), [tuple(row) for row in rows]


def rows_named(name):
    """Every row holding NAME, newest first (the current key, then its predecessors)."""
    return [row for row in registry.all_keys(now=NOW) if row.name == name]


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


@pytest.mark.parametrize("text", ["99999999999d", "9999999d", "5300w"])
def test_absurd_duration_is_a_clear_error(text):
    with pytest.raises(RegistryError, match="at most 100 years"):
        registry.parse_duration(text)


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


def test_a_date_past_the_last_one_python_knows_is_a_clear_error():
    # In UTC this is the year 10000: an OverflowError unless caught.
    with pytest.raises(RegistryError, match="out of range"):
        registry.parse_date("9999-12-31T23:00:00-05:00")


# ---- names, scopes and networks -------------------------------------------------------


@pytest.mark.parametrize("name", ["ci", "a", "x" * 64, "team.web-1_b", "9lives"])
def test_good_names_are_kept_as_given(name):
    assert registry.check_name(name) == name


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 65, "a/b", "é", "a\n"])
def test_bad_name_is_refused(name):
    with pytest.raises(RegistryError, match="not a valid key name"):
        registry.check_name(name)


def test_credential_leak_a_key_pasted_as_a_name_is_never_echoed():
    pasted = keys.generate_key()
    for text in (pasted, f"x{pasted}", f"{pasted} "):
        with pytest.raises(RegistryError, match="is an API key, not a key name") as raised:
            registry.check_name(text)
        assert random_part(pasted) not in str(raised.value)
    with pytest.raises(RegistryError) as raised:
        registry.create("ci", owner=pasted, now=NOW)
    assert random_part(pasted) not in str(raised.value)
    assert registry.all_keys(now=NOW) == []


def test_no_scope_means_every_scope_and_repeats_are_dropped():
    assert registry.check_scopes([]) == ("*",)
    assert registry.check_scopes(["items:read", "items:write", "items:read"]) == (
        "items:read",
        "items:write",
    )


@pytest.mark.parametrize("scope", ["items read", "", ":read", "a" * 65, "items/read", "**"])
def test_bad_scope_is_refused(scope):
    with pytest.raises(RegistryError, match="not a valid scope"):
        registry.check_scopes(["items:read", scope])


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("203.0.113.7/24", "203.0.113.0/24"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("2001:db8::1/32", "2001:db8::/32"),
        # IPv4-mapped IPv6: clients are compared as IPv4, so it is kept as what it means.
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:203.0.113.9", "203.0.113.9/32"),
    ],
)
def test_networks_are_stored_normalised(given, stored):
    assert registry.check_networks([given]) == (stored,)


@pytest.mark.parametrize("network", ["10.0.0.300", "10.0.0.0/33", "example.com", "", "::/129"])
def test_bad_network_is_refused(network):
    with pytest.raises(RegistryError, match="not an IP address or CIDR"):
        registry.check_networks(["10.0.0.0/8", network])


# ---- create -------------------------------------------------------------------------


def test_create_returns_a_well_formed_key_and_stores_only_its_hash():
    key, new = registry.create("ci", now=NOW)
    assert keys.is_well_formed(key)
    [stored] = registry.all_keys(now=NOW)
    assert stored.id == new.id
    assert stored.digest == keys.hashed_entry(key)
    assert stored.fingerprint == keys.fingerprint(key)
    assert stored.created == NOW
    assert (stored.expires, stored.revoked, stored.rotated, stored.last_used) == (None,) * 4
    assert stored.request_count == 0
    assert registry.status(stored, NOW) == KeyStatus.ACTIVE
    assert registry.find_key(key).id == new.id
    assert registry.find_key(keys.generate_key()) is None


def test_owner_defaults_to_the_name():
    _, new = registry.create("ci", now=NOW)
    assert registry.current("ci").owner == new.owner == "ci"


def test_owner_is_kept_and_checked_like_a_name():
    _, new = registry.create("ci-deploy", owner="acme", now=NOW)
    assert registry.current("ci-deploy").owner == "acme"
    assert registry.record(new).owner == "acme"
    with pytest.raises(RegistryError, match="not a valid key name"):
        registry.create("web", owner="acme corp", now=NOW)


def test_create_without_scope_means_every_scope_and_nothing_more():
    registry.create("all", now=NOW)
    registry.create("reader", scopes=["items:read", "items:read"], now=NOW)
    assert registry.current("all").scopes == ["*"]
    # No '*' slipped in next to the scope asked for (privilege escalation).
    assert registry.current("reader").scopes == ["items:read"]


def test_create_keeps_expiry_and_allowlist():
    registry.create(
        "ci",
        expires=NOW + timedelta(days=90),
        allowed_ips=["203.0.113.7/24", "2001:db8::1/32", "::ffff:10.0.0.0/104"],
        now=NOW,
    )
    stored = registry.current("ci")
    assert stored.expires == NOW + timedelta(days=90)
    assert stored.allowed_ips == ["203.0.113.0/24", "2001:db8::/32", "10.0.0.0/8"]


def test_record_is_what_a_server_attaches_to_a_request():
    _, new = registry.create(
        "ci", owner="acme", scopes=["items:read"], allowed_ips=["203.0.113.0/24"], now=NOW
    )
    record = registry.record(new)
    assert (record.name, record.owner, record.fingerprint, record.id) == (
        "ci",
        "acme",
        new.fingerprint,
        new.id,
    )
    assert record.scopes == frozenset({"items:read"})
    assert record.allowed_ips == (ip_network("203.0.113.0/24"),)
    assert record.revoked is False
    assert registry.record(registry.revoke("ci", now=NOW)).revoked is True


def test_duplicate_name_is_refused_and_changes_nothing():
    registry.create("ci", now=NOW)
    before = snapshot()
    with pytest.raises(RegistryError, match="already exists"):
        registry.create("ci", owner="someone-else", now=NOW)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expires": NOW}, "must be in the future"),
        ({"expires": NOW - timedelta(days=1)}, "must be in the future"),
        ({"scopes": ["items read"]}, "not a valid scope"),
        ({"allowed_ips": ["10.0.0.300"]}, "not an IP address or CIDR"),
        ({"allowed_ips": ["10.0.0.0/33"]}, "not an IP address or CIDR"),
        ({"owner": "-bad"}, "not a valid key name"),
    ],
)
def test_bad_create_is_refused_and_changes_nothing(fields, message):
    before = snapshot()
    with pytest.raises(RegistryError, match=message):
        registry.create("ci", now=NOW, **fields)
    assert snapshot() == before


def test_registry_leak_database_holds_no_raw_key():
    issued = [
        registry.create(name, scopes=["items:read"], now=NOW)[0]
        for name in ("web", "ci", "batch", "partner")
    ]
    issued.append(registry.rotate("ci", grace=timedelta(days=1), now=NOW)[0])
    registry.revoke("batch", now=NOW)
    db.session.remove()
    everything = Path(db.engine.url.database).read_bytes()
    for key in issued:
        assert key.encode() not in everything
        assert random_part(key).encode() not in everything
        assert keys.hashed_entry(key).encode() in everything
    assert (keys.KEY_PREFIX + "_").encode() not in everything


# ---- the unique digest ----------------------------------------------------------------


def test_duplicate_hashes_are_refused_by_the_database():
    """Two rows claiming one key would make its name, owner and rights ambiguous."""
    key, first = registry.create("ci", scopes=["items:read"], now=NOW)
    columns = [column.name for column in ApiKey.__table__.columns if column.name != "id"]
    twin = {column: getattr(first, column) for column in columns}
    twin.update(name="admin", owner="admin", scopes=["*"])
    db.session.add(ApiKey(**twin))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()
    before = snapshot()
    # Through the registry too: the change is refused whole, the version not bumped.
    with pytest.raises(RegistryError), registry.changing() as number:
        db.session.add(ApiKey(**{**twin, "version": number}))
    assert snapshot() == before
    assert registry.find_key(key).name == "ci"


# ---- revoke ----------------------------------------------------------------------------


def test_revoke_marks_the_key_and_keeps_the_first_revocation_time():
    registry.create("ci", now=NOW)
    revoked = registry.revoke("ci", now=NOW + timedelta(hours=1))
    assert revoked.revoked == NOW + timedelta(hours=1)
    assert registry.status(revoked, NOW + timedelta(hours=2)) == KeyStatus.REVOKED
    again = registry.revoke("ci", now=NOW + timedelta(days=3))
    assert again.revoked == NOW + timedelta(hours=1)
    assert registry.current("ci").revoked == NOW + timedelta(hours=1)


def test_a_revoked_key_stays_revoked_whatever_its_expiry():
    registry.create("ci", expires=NOW + timedelta(hours=1), now=NOW)
    revoked = registry.revoke("ci", now=NOW)
    assert registry.status(revoked, NOW + timedelta(days=1)) == KeyStatus.REVOKED
    assert not KeyStatus.REVOKED.usable
    assert not KeyStatus.EXPIRED.usable
    assert KeyStatus.ACTIVE.usable
    assert KeyStatus.ROTATED.usable


def test_stale_credential_revoke_also_revokes_predecessors_still_in_grace():
    registry.create("ci", now=NOW)
    registry.rotate("ci", grace=timedelta(hours=1), now=NOW)  # over before the revocation
    registry.rotate("ci", grace=timedelta(days=7), now=NOW + timedelta(hours=1))
    later = NOW + timedelta(hours=2)
    registry.revoke("ci", now=later)
    current, in_grace, ended = rows_named("ci")
    assert current.revoked == in_grace.revoked == later
    assert registry.status(in_grace, later) == KeyStatus.REVOKED
    # A predecessor whose grace period had already ended is left as it was: expired.
    assert ended.revoked is None
    assert registry.status(ended, later) == KeyStatus.EXPIRED


def test_revoke_of_an_unknown_name_is_refused():
    before = snapshot()
    with pytest.raises(RegistryError, match="no key named 'ghost'"):
        registry.revoke("ghost", now=NOW)
    assert snapshot() == before


# ---- rotate ----------------------------------------------------------------------------


def test_rotate_gives_the_same_owner_and_rights_to_a_new_key():
    old_key, old = registry.create(
        "ci",
        owner="acme",
        scopes=["items:read", "items:write"],
        expires=NOW + timedelta(days=90),
        allowed_ips=["203.0.113.0/24"],
        now=NOW,
    )
    later = NOW + timedelta(days=1)
    new_key, successor, retired = registry.rotate("ci", grace=timedelta(days=7), now=later)
    assert keys.is_well_formed(new_key)
    assert new_key != old_key
    assert registry.find_key(new_key).id == successor.id
    assert registry.current("ci").id == successor.id
    assert (successor.name, successor.owner) == ("ci", "acme")
    assert successor.digest == keys.hashed_entry(new_key)
    assert successor.created == later
    assert successor.scopes == ["items:read", "items:write"]
    assert successor.allowed_ips == ["203.0.113.0/24"]
    assert successor.rotated_from == old.id
    # Same lifetime as the old key, counted from the rotation.
    assert successor.expires == later + timedelta(days=90)
    assert registry.status(successor, later) == KeyStatus.ACTIVE
    # The old key keeps its name, owner and hash, and lives until the grace period ends.
    assert retired.id == old.id
    assert (retired.name, retired.owner) == ("ci", "acme")
    assert retired.digest == keys.hashed_entry(old_key)
    assert retired.rotated == later
    assert retired.revoked is None
    assert retired.expires == later + timedelta(days=7)
    assert registry.status(retired, later) == KeyStatus.ROTATED
    assert registry.status(retired, later + timedelta(days=7)) == KeyStatus.EXPIRED
    assert registry.record(retired).name == "ci"
    listed = [(row.name, row.fingerprint, registry.status(row, later)) for row in rows_named("ci")]
    assert listed == [
        ("ci", keys.fingerprint(new_key), KeyStatus.ACTIVE),
        ("ci", keys.fingerprint(old_key), KeyStatus.ROTATED),
    ]


def test_rotate_never_extends_the_old_keys_life():
    registry.create("ci", expires=NOW + timedelta(days=2), now=NOW)
    _, _, retired = registry.rotate("ci", grace=timedelta(days=7), now=NOW)
    assert retired.expires == NOW + timedelta(days=2)


def test_stale_credential_rotated_with_zero_grace_is_revoked_at_once():
    registry.create("ci", now=NOW)
    _, successor, retired = registry.rotate("ci", grace=timedelta(0), now=NOW)
    assert retired.revoked == NOW
    assert registry.status(retired, NOW) == KeyStatus.REVOKED
    assert registry.record(retired).revoked is True
    assert registry.status(successor, NOW) == KeyStatus.ACTIVE


def test_rotating_twice_keeps_one_current_key_per_name():
    registry.create("ci", now=NOW)
    registry.rotate("ci", grace=timedelta(days=1), now=NOW)
    registry.rotate("ci", grace=timedelta(days=1), now=NOW + timedelta(hours=1))
    rows = rows_named("ci")
    assert [registry.status(row, NOW + timedelta(hours=1)) for row in rows] == [
        KeyStatus.ACTIVE,
        KeyStatus.ROTATED,
        KeyStatus.ROTATED,
    ]
    assert len({row.digest for row in rows}) == 3
    assert rows[0].rotated_from == rows[1].id
    assert rows[1].rotated_from == rows[2].id


def test_rotating_the_longest_name_keeps_it():
    longest = "x" * 64
    registry.create(longest, now=NOW)
    registry.rotate(longest, grace=timedelta(days=1), now=NOW)
    assert [row.name for row in registry.all_keys(now=NOW)] == [longest, longest]


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_stale_credential_cannot_be_rotated_back_to_life(state):
    registry.create("ci", expires=NOW + timedelta(hours=1), now=NOW)
    now = NOW + timedelta(hours=2)
    if state == "revoked":
        registry.revoke("ci", now=NOW)
    before = snapshot()
    with pytest.raises(RegistryError, match="only an active key can be rotated"):
        registry.rotate("ci", grace=timedelta(days=1), now=now)
    assert snapshot() == before


def test_rotate_of_an_unknown_name_is_refused():
    registry.create("ci", now=NOW)
    before = snapshot()
    with pytest.raises(RegistryError, match="no key named 'ghost'"):
        registry.rotate("ghost", grace=timedelta(days=1), now=NOW)
    assert snapshot() == before


# ---- listing ---------------------------------------------------------------------------


def test_all_keys_by_name_then_newest_first():
    for name in ("web", "batch", "ci"):
        registry.create(name, now=NOW)
    registry.rotate("ci", grace=timedelta(days=1), now=NOW)
    rows = registry.all_keys(now=NOW)
    assert [row.name for row in rows] == ["batch", "ci", "ci", "web"]
    assert rows[1].id > rows[2].id


def test_all_keys_unused_for_finds_stale_keys():
    now = NOW + timedelta(days=365)
    for name in ("never-used", "used-long-ago", "used-lately", "brand-new"):
        registry.create(name, now=now - timedelta(days=1) if name == "brand-new" else NOW)
    for name, last_used in (("used-long-ago", NOW + timedelta(days=10)), ("used-lately", now)):
        db.session.execute(update(ApiKey).where(ApiKey.name == name).values(last_used=last_used))
    db.session.commit()
    unused = registry.all_keys(unused_for=timedelta(days=90), now=now)
    # A key made yesterday has not been "unused for 90 days", however idle.
    assert [row.name for row in unused] == ["never-used", "used-long-ago"]
    assert len(registry.all_keys(now=now)) == 4
    assert registry.all_keys(unused_for=timedelta(days=400), now=now) == []


# ---- the version counter ----------------------------------------------------------------


def test_every_change_bumps_the_version_once_and_marks_the_rows_it_touched():
    start = version()
    _, a = registry.create("a", now=NOW)
    _, b = registry.create("b", now=NOW)
    assert version() == start + 2
    assert (a.version, b.version) == (start + 1, start + 2)

    _, successor, retired = registry.rotate("a", grace=timedelta(days=1), now=NOW)
    assert version() == start + 3
    assert successor.version == retired.version == start + 3

    registry.revoke("a", now=NOW)  # the current key and its predecessor in grace
    assert version() == start + 4
    by_id = {row.id: row.version for row in registry.all_keys(now=NOW)}
    assert by_id == {a.id: start + 4, successor.id: start + 4, b.id: start + 2}

    # A refused change leaves the counter where it was.
    for refused in (
        lambda: registry.create("b", now=NOW),
        lambda: registry.rotate("a", grace=timedelta(days=1), now=NOW),
        lambda: registry.revoke("ghost", now=NOW),
    ):
        with pytest.raises(RegistryError):
            refused()
    assert version() == start + 4
    assert db.session.scalar(select(ApiKey.version).order_by(ApiKey.version.desc())) == start + 4
