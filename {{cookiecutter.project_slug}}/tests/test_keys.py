"""The key format, hashing and the key ring: keys.py, which needs no Flask."""

import hashlib
import math
import string
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }} import keys

OTHER_PREFIX = "zz" if keys.KEY_PREFIX != "zz" else "yy"


def test_generated_key_has_prefix_random_body_and_checksum():
    key = keys.generate_key()
    prefix, _, rest = key.partition("_")
    assert prefix == keys.KEY_PREFIX
    assert len(key) == keys.KEY_LENGTH
    assert len(rest) == keys.RANDOM_LENGTH + keys.CHECKSUM_LENGTH == 38
    assert set(rest) <= set(string.ascii_letters + string.digits)
    assert keys.is_well_formed(key)


def test_brute_force_generated_keys_carry_at_least_190_bits():
    generated = [keys.generate_key() for _ in range(200)]
    bodies = [key[len(keys.KEY_PREFIX) + 1 : -keys.CHECKSUM_LENGTH] for key in generated]
    assert all(len(body) >= 32 for body in bodies)
    assert min(len(body) for body in bodies) * math.log2(62) >= 190
    assert len(set(generated)) == len(generated)
    # 6,400 draws from the whole base62 alphabet leave no character unused
    # (a hex-only or lower-case-only generator would).
    assert set("".join(bodies)) == set(keys.ALPHABET)


def test_typo_in_any_character_fails_the_checksum():
    key = keys.generate_key()
    start = len(keys.KEY_PREFIX) + 1
    for position in range(start, len(key)):
        replacement = "A" if key[position] != "A" else "B"
        typo = key[:position] + replacement + key[position + 1 :]
        assert not keys.is_well_formed(typo), position


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "changeme",
        "12345",
        keys.KEY_PREFIX + "_",
        keys.KEY_PREFIX.upper() + "_" + "A" * 38,
    ],
)
def test_guessed_keys_are_rejected_offline(candidate):
    assert not keys.is_well_formed(candidate)


def test_key_of_another_project_is_rejected():
    foreign = keys.generate_key(prefix=OTHER_PREFIX)
    assert not keys.is_well_formed(foreign)
    ring = keys.KeyRing([(keys.hash_key(foreign), keys.KeyRecord("foreign", "-"))])
    assert ring.lookup(foreign) is None


def test_key_with_extra_or_missing_characters_is_rejected():
    key = keys.generate_key()
    assert not keys.is_well_formed(key + "0")
    assert not keys.is_well_formed(key[:-1])
    assert not keys.is_well_formed(" " + key)


def test_hash_entry_and_fingerprint():
    key = keys.generate_key()
    digest = keys.hash_key(key)
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    assert keys.hashed_entry(key) == "sha256:" + digest
    assert keys.fingerprint(key) == digest[:12]
    assert keys.hash_key(keys.generate_key()) != digest


def test_hash_key_is_the_sha256_of_any_presented_value():
    for value in (keys.generate_key(), "", "changeme", "ключ", "\ud800 lone surrogate"):
        expected = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        assert keys.hash_key(value) == expected


def test_fingerprint_of_any_presented_value_is_12_hex():
    for value in ("", "changeme", "ключ", "\x1b[31m"):
        fingerprint = keys.fingerprint(value)
        assert len(fingerprint) == 12
        assert set(fingerprint) <= set("0123456789abcdef")


def test_key_ring_finds_plain_and_hashed_entries():
    plain, hashed = keys.generate_key(), keys.generate_key()
    ring = keys.KeyRing(keys.parse_api_keys(f"{plain},{keys.hashed_entry(hashed)}"))
    assert len(ring) == 2
    assert ring.lookup(plain).name == "api-keys-1"
    assert ring.lookup(hashed).name == "api-keys-2"
    assert ring.lookup(hashed).fingerprint == keys.fingerprint(hashed)
    assert ring.lookup(hashed).scopes == frozenset({"*"})
    assert ring.lookup(keys.generate_key()) is None


def test_credential_theft_key_ring_holds_no_raw_key():
    key = keys.generate_key()
    ring = keys.KeyRing(keys.parse_api_keys(key))
    assert ring.lookup(key) is not None
    assert key not in repr(vars(ring))
    assert key not in repr(ring.lookup(key))


def test_timing_attack_lookup_hashes_once_and_never_scans_stored_keys(monkeypatch):
    key = keys.generate_key()
    entries = [(f"{number:064x}", keys.KeyRecord(f"k{number}", "-")) for number in range(5000)]
    ring = keys.KeyRing([*entries, *keys.parse_api_keys(key)])
    hashed = []
    real_hash = keys.hash_key

    def spy_hash(value):
        hashed.append(value)
        return real_hash(value)

    monkeypatch.setattr(keys, "hash_key", spy_hash)

    assert ring.lookup(key).name == "api-keys-1"
    # One hash and one dict probe whatever the ring's size: no scan over stored keys,
    # so the time taken depends on no stored key.
    assert hashed == [key]


def test_malformed_key_never_reaches_the_ring(monkeypatch):
    ring = keys.KeyRing(keys.parse_api_keys(keys.generate_key()))
    monkeypatch.setattr(keys, "hash_key", pytest.fail)
    assert ring.lookup("changeme") is None


def test_duplicate_entries_count_once():
    key = keys.generate_key()
    ring = keys.KeyRing(keys.parse_api_keys(f"{key},{keys.hashed_entry(key)},{key}"))
    assert len(ring) == 1
    assert ring.lookup(key).name == "api-keys-1"


def test_blank_entries_are_ignored():
    key = keys.generate_key()
    assert list(keys.parse_api_keys("")) == []
    assert list(keys.parse_api_keys(" , ,\t")) == []
    entries = list(keys.parse_api_keys(f" ,  {key}\t,, "))
    assert entries == [(keys.hash_key(key), keys.KeyRecord("api-keys-1", keys.fingerprint(key)))]


@pytest.mark.parametrize(
    "bad",
    [
        "changeme-please",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:not-hex-at-all",
        keys.generate_key(prefix=OTHER_PREFIX),
        keys.generate_key()[:-1] + "~",
    ],
)
def test_credential_leak_bad_entry_is_never_echoed(bad):
    good = keys.generate_key()
    with pytest.raises(keys.KeyConfigError) as caught:
        list(keys.parse_api_keys(f"{good},{bad}"))
    message = str(caught.value)
    assert "API_KEYS" in message
    assert "entry 2" in message
    assert bad not in message
    assert good not in message
    assert bad.removeprefix("sha256:") not in message


def test_scopes_and_expiry_of_a_record():
    now = datetime.now(UTC)
    reader = keys.KeyRecord("r", "f", scopes=frozenset({"items:read"}), expires=now)
    assert reader.has_scope("items:read")
    assert not reader.has_scope("items:write")
    assert keys.KeyRecord("all", "f").has_scope("anything:at-all")
    assert reader.is_expired(now)
    assert not reader.is_expired(now - timedelta(seconds=1))
    assert not keys.KeyRecord("forever", "f").is_expired(now + timedelta(days=36500))


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:192.0.2.7", "192.0.2.7/32"),
        (" 203.0.113.9/24 ", "203.0.113.0/24"),
        ("2001:db8::1/32", "2001:db8::/32"),
    ],
)
def test_allowlists_compare_ipv4_mapped_networks_as_ipv4(text, network):
    assert str(keys.parse_network(text)) == network


@pytest.mark.parametrize("text", ["10.0.0.300", "10.0.0.0/33", "", "any"])
def test_a_bad_network_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="not an IP address or CIDR network"):
        keys.parse_network(text)
