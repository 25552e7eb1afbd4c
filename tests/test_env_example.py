""".env.example lists every setting the app reads, and only those, for each option set.

A setting missing there is one a user never hears of; a name left there after
the code stopped reading it (or one of a disabled option) sends them chasing a
switch that does nothing.
"""

from __future__ import annotations

import re

import pytest

from bakery import MATRIX, Baked

# How config.py reads a variable: environ.get("NAME"), environ["NAME"], or a helper
# given the environment and the name, such as _boolean(environ, "NAME", ...).
READS = re.compile(
    r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|\(\s*environ\s*,\s*["']([A-Z][A-Z0-9_]*)["']"""
)
# A line of .env.example that sets a variable, commented out or not.
LISTED = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def settings_read(baked: Baked) -> set[str]:
    """The environment variables the baked project's config.py reads."""
    source = (baked.root / "src" / baked.package / "config.py").read_text(encoding="utf-8")
    return {first or second for first, second in READS.findall(source)}


def settings_listed(baked: Baked) -> set[str]:
    """The variables .env.example shows."""
    return set(LISTED.findall((baked.root / ".env.example").read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", ["default", "minimal"])
def test_env_example_lists_exactly_the_settings_config_reads(bake, name):
    baked = bake(**MATRIX[name])
    read = settings_read(baked)
    assert {"APP_ENV", "API_KEYS", "REQUIRE_HTTPS"} <= read, f"the pattern misses reads: {read}"
    listed = settings_listed(baked)
    assert read - listed == set(), "read by config.py, missing from .env.example"
    assert listed - read == set(), "in .env.example, never read by config.py"


@pytest.mark.parametrize(("name", "expected"), [("default", True), ("minimal", False)])
def test_rate_limit_settings_follow_the_option(bake, name, expected):
    """The three rate-limit variables come and go with use_rate_limiting, together."""
    listed = settings_listed(bake(**MATRIX[name]))
    rate_limits = {"RATELIMIT_DEFAULT", "RATELIMIT_STORAGE_URI", "AUTH_FAILURE_LIMIT"}
    assert (rate_limits <= listed) is expected
    assert (rate_limits & listed == set()) is not expected
