"""API keys: their format, generation, hashing, and the key ring that checks them.

Standard library only, so that ``scripts/generate_api_key.py`` can load this
file by path and run with nothing but Python installed.

A key looks like ``{{ cookiecutter.key_prefix }}_<32 random base62 characters><6-character checksum>``:

* the prefix tells people and secret scanners whose key it is;
* 32 characters drawn with :mod:`secrets` carry 190 bits of randomness;
* the checksum (CRC32 of everything before it, in base62) lets anyone reject a
  typo or a made-up key offline, before any lookup.

The server never keeps a key, only its SHA-256 hash (``sha256:<64 hex>``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import string
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

KEY_PREFIX = "{{ cookiecutter.key_prefix }}"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
HASH_SCHEME = "sha256:"
FINGERPRINT_LENGTH = 12
WILDCARD_SCOPE = "*"

KEY_LENGTH = len(KEY_PREFIX) + 1 + RANDOM_LENGTH + CHECKSUM_LENGTH

_KEY_SHAPE = re.compile(KEY_PREFIX + "_[0-9A-Za-z]+")
_KEY_ANYWHERE = re.compile(
    KEY_PREFIX + "_[0-9A-Za-z]{" + str(KEY_LENGTH - len(KEY_PREFIX) - 1) + "}"
)
_HASHED_ENTRY = re.compile(r"sha256:[0-9a-f]{64}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KeyConfigError(ValueError):
    """A configured key entry is unusable. The message never contains the entry itself."""


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, len(ALPHABET))
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key(prefix: str = KEY_PREFIX) -> str:
    """Return a new random key. Show it once; store only :func:`hashed_entry` of it."""
    body = f"{prefix}_" + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + _checksum(body)


def is_well_formed(candidate: str) -> bool:
    """Tell, offline, whether ``candidate`` has this project's prefix, shape and checksum.

    Rejects typos, keys of other projects and guesses before any lookup, so
    they cost nothing and never touch the key ring.
    """
    # The length first: a huge header is refused without running the regex over it.
    if len(candidate) != KEY_LENGTH or _KEY_SHAPE.fullmatch(candidate) is None:
        return False
    body, checksum = candidate[:-CHECKSUM_LENGTH], candidate[-CHECKSUM_LENGTH:]
    return _checksum(body) == checksum


def hash_key(key: str) -> str:
    """SHA-256 of a key in hex: what the server stores and compares."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def hashed_entry(key: str) -> str:
    """The ``sha256:<hex>`` form of a key, safe to put in API_KEYS or a file."""
    return HASH_SCHEME + hash_key(key)


def fingerprint(value: str) -> str:
    """A short, non-reversible name for any presented value, safe to log and show."""
    return hash_key(value)[:FINGERPRINT_LENGTH]


def redact_keys(text: str) -> str:
    """Replace anything shaped like a key of this project with its fingerprint.

    For text that came from a request and is about to be logged, such as a URL
    path with a key pasted into it (credential leak).
    """
    return _KEY_ANYWHERE.sub(lambda match: f"[key {fingerprint(match.group())}]", text)


def find_keys(text: str) -> Iterator[str]:
    """Yield each real key of this project in ``text``: the right shape and a valid checksum.

    For secret scanning (scripts/check_no_keys.py): the checksum tells a key from
    a look-alike, such as an example in the docs, without any lookup.
    """
    for match in _KEY_ANYWHERE.finditer(text):
        if is_well_formed(match.group()):
            yield match.group()


def parse_network(text: str) -> Network:
    """``203.0.113.0/24``, ``2001:db8::/32`` or an address -> a network; else a ValueError.

    An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) becomes the IPv4 network it
    means: clients are compared as IPv4, so it would otherwise never match.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR network") from None
    mapped = getattr(network.network_address, "ipv4_mapped", None)
    if mapped is not None:  # only a prefix of at least 96 bits keeps ::ffff: in its address
        return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@dataclass(frozen=True)
class KeyRecord:
    """What the server knows about a key: everything but the secret.

    ``owner`` is the customer, team or service the key belongs to (by default the
    key's own name); ``id`` is its registry row, None for a key of API_KEYS.
    """

    name: str
    fingerprint: str
    owner: str = ""
    scopes: frozenset[str] = frozenset({WILDCARD_SCOPE})
    expires: datetime | None = None
    allowed_ips: tuple[Network, ...] = field(default=())
    revoked: bool = False
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None = None
    # The fingerprint its rate-limit count is kept under, shared with the key it replaced.
    counter: str = ""
{%- endif %}
    id: int | None = None

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", self.name)
{%- if cookiecutter.use_rate_limiting %}
        if not self.counter:
            object.__setattr__(self, "counter", self.fingerprint)
{%- endif %}

    def has_scope(self, scope: str) -> bool:
        """True when the key may use ``scope``; ``*`` grants every scope."""
        return WILDCARD_SCOPE in self.scopes or scope in self.scopes

    def is_expired(self, now: datetime) -> bool:
        """True once the key's expiry has passed."""
        return self.expires is not None and now >= self.expires


class KeyRing:
    """The set of keys the server accepts, indexed by the SHA-256 of each key.

    Lookup hashes the presented key and finds the digest in a dict: O(1) however
    many keys there are. No constant-time comparison is needed (timing attack):
    the dict compares digests, and an attacker who cannot invert SHA-256 cannot
    choose a digest that shares a prefix with a stored one, so the time a lookup
    takes says nothing about any stored key.
    """

    def __init__(self, entries: Iterable[tuple[str, KeyRecord]] = ()) -> None:
        self._by_digest: dict[str, KeyRecord] = {}
        for digest, record in entries:
            self._by_digest.setdefault(digest, record)

    def add(self, digest: str, record: KeyRecord) -> None:
        """Accept the key whose SHA-256 (hex) is ``digest``, or update its record."""
        self._by_digest[digest] = record

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, presented: str) -> KeyRecord | None:
        """Return the record of a presented key, or None for anything not in the ring.

        A value that is not a well-formed key of this project (typo, guess, another
        vendor's key) is refused offline, by its shape and checksum, before any lookup.
        """
        if not is_well_formed(presented):
            return None
        return self._by_digest.get(hash_key(presented))


def parse_api_keys(value: str) -> Iterator[tuple[str, KeyRecord]]:
    """Read API_KEYS: comma-separated keys or ``sha256:`` entries, each with every scope.

    Raises :class:`KeyConfigError` naming the position of a bad entry, never its
    text, so a mistyped secret does not end up in a log (credential leak).
    """
    items = [item.strip() for item in value.split(",")]
    for position, item in enumerate(filter(None, items), start=1):
        if item.startswith(HASH_SCHEME):
            if not _HASHED_ENTRY.fullmatch(item):
                raise KeyConfigError(
                    f"API_KEYS entry {position} is not a valid 'sha256:' followed by "
                    "64 lower-case hex digits"
                )
            digest = item.removeprefix(HASH_SCHEME)
        elif is_well_formed(item):
            digest = hash_key(item)
        else:
            raise KeyConfigError(
                f"API_KEYS entry {position} is not a well-formed {KEY_PREFIX}_ key "
                "(wrong prefix or checksum); make one with scripts/generate_api_key.py"
            )
        yield (
            digest,
            KeyRecord(name=f"api-keys-{position}", fingerprint=digest[:FINGERPRINT_LENGTH]),
        )
