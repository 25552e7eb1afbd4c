"""``flask keys``: create, list, show, revoke, rotate and check keys (cli.py).

A new key goes to stdout once and alone; everything else goes to stderr. A bad
argument is one clear ``Error:`` line, a non-zero exit, and an untouched file.
"""

import json
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }} import (
    ConfigError,
    create_app,
    keys,
    registry,
)

OTHER_PREFIX = "zz" if keys.KEY_PREFIX != "zz" else "yy"


def created_key(result):
    """The key a successful create or rotate printed: stdout is that one line, nothing else."""
    assert result.exit_code == 0, result.output
    new_key = result.stdout.removesuffix("\n")
    assert result.stdout == new_key + "\n"
    assert keys.is_well_formed(new_key)
    return new_key


def one_error_line(result):
    """The single ``Error:`` line of a refused command (usage lines may come before it)."""
    assert not result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)
    return errors[0]


def entries_of(path):
    return {entry.name: entry for entry in registry.read_entries(path)}


# ---- create ----------------------------------------------------------------------------


def test_create_prints_the_key_alone_on_stdout(keys_cli, registry_path):
    result = keys_cli("create", "ci")
    new_key = created_key(result)
    stored = entries_of(registry_path)["ci"]
    assert stored.hash == keys.hashed_entry(new_key)
    assert stored.scopes == ("*",)
    assert stored.expires is None
    assert keys.fingerprint(new_key) in result.stderr
    assert "shown once" in result.stderr
    assert new_key not in result.stderr


def test_create_help_says_that_no_scope_means_every_scope(keys_cli):
    result = keys_cli("create", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "Without --scope the key gets '*', every scope." in help_text
    options = ["--scope", "--expires-in", "--expires", "--allow-ip"]
{%- if cookiecutter.use_rate_limiting %}
    options.append("--rate-limit")
{%- endif %}
    for option in options:
        assert option in help_text


def test_create_with_scopes_expiry_allowlist_and_limit(keys_cli, registry_path):
    before = datetime.now(UTC).replace(microsecond=0)
    result = keys_cli(
        "create",
        "partner",
        "--scope",
        "items:read",
        "--scope",
        "items:write",
        "--expires-in",
        "90d",
        "--allow-ip",
        "203.0.113.0/24",
        "--allow-ip",
        "2001:db8::/32",
{%- if cookiecutter.use_rate_limiting %}
        "--rate-limit",
        "100/minute",
{%- endif %}
    )
    created_key(result)
    stored = entries_of(registry_path)["partner"]
    assert stored.scopes == ("items:read", "items:write")
    assert before + timedelta(days=90) <= stored.expires <= before + timedelta(days=90, seconds=5)
    assert stored.allowed_ips == ("203.0.113.0/24", "2001:db8::/32")
{%- if cookiecutter.use_rate_limiting %}
    assert stored.rate_limit == "100/minute"
{%- endif %}


def test_create_with_an_expiry_date(keys_cli, registry_path):
    created_key(keys_cli("create", "ci", "--expires", "2099-01-31"))
    assert entries_of(registry_path)["ci"].expires == datetime(2099, 1, 31, tzinfo=UTC)


def test_create_works_in_production_before_any_key_exists(keys_cli, registry_path):
    environ = {"APP_ENV": "production", "API_KEYS_FILE": str(registry_path)}
    with pytest.raises(ConfigError, match="API_KEYS"):
        create_app(environ)
    created_key(keys_cli("create", "first", APP_ENV="production", API_KEYS=""))
    assert create_app(environ).extensions["api_keys"].usable_count(datetime.now(UTC)) == 1


def test_duplicate_name_is_refused_and_the_file_unchanged(keys_cli, registry_path):
    first = created_key(keys_cli("create", "ci"))
    before = registry_path.read_bytes()
    result = keys_cli("create", "ci")
    assert result.exit_code == 1
    assert "already exists" in one_error_line(result)
    assert registry_path.read_bytes() == before
    assert first not in result.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--expires-in", "90x"], 2, "not a duration"),
        (["--expires-in", "-1d"], 2, "not a duration"),
        (["--expires-in", "1.5d"], 2, "not a duration"),
        (["--expires", "31/01/2099"], 2, "not a date"),
        (["--expires", "2001-01-31"], 1, "must be in the future"),
        pytest.param(
            ["--expires-in", "0s"],
            1,
            "must be in the future",
        ),
        (["--expires-in", "1d", "--expires", "2099-01-31"], 2, "not both"),
        pytest.param(
            ["--expires-in", "0s", "--expires", "2099-01-31"],
            2,
            "not both",
        ),
        (["--allow-ip", "10.0.0.300"], 2, "not an IP address or CIDR"),
        (["--allow-ip", "10.0.0.0/33"], 2, "not an IP address or CIDR"),
        (["--allow-ip", "example.com"], 2, "not an IP address or CIDR"),
{%- if cookiecutter.use_rate_limiting %}
        (["--rate-limit", "lots"], 2, "not a rate limit"),
{%- endif %}
        (["--scope", "items read"], 1, "not a valid scope"),
    ],
)
def test_bad_create_argument_is_one_error_and_touches_nothing(
    keys_cli, registry_path, args, exit_code, message
):
    created_key(keys_cli("create", "existing"))
    before = registry_path.read_bytes()
    result = keys_cli("create", "new", *args)
    assert result.exit_code == exit_code
    assert message in one_error_line(result)
    assert registry_path.read_bytes() == before


@pytest.mark.parametrize(
    "args", [["create", "bad name"], ["create", "x", "--expires", "2001-01-01"]]
)
def test_refused_create_creates_no_file(keys_cli, registry_path, args):
    result = keys_cli(*args)
    assert result.exit_code == 1
    one_error_line(result)
    assert not registry_path.exists()


@pytest.mark.parametrize("duration", ["99999999999d", "9999999d"])
def test_absurd_lifetime_is_one_error_line(keys_cli, registry_path, duration):
    result = keys_cli("create", "ci", "--expires-in", duration)
    assert result.exit_code in (1, 2)
    one_error_line(result)
    assert not registry_path.exists()


@pytest.mark.parametrize("command", ["create", "revoke", "rotate"])
def test_missing_registry_directory_is_one_clear_error(keys_cli, tmp_path, command):
    path = tmp_path / "nowhere" / "api_keys.toml"
    result = keys_cli(command, "ci", API_KEYS_FILE=str(path))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(path.parent) in line
    assert "does not exist" in line
    assert not path.parent.exists()


# ---- list and show ---------------------------------------------------------------------


@pytest.fixture
def three_keys(keys_cli):
    """Three keys made through the CLI: one plain, one scoped and limited, one revoked."""
    made = {
        "web": created_key(keys_cli("create", "web")),
        "partner": created_key(
            keys_cli(
                "create",
                "partner",
                "--scope",
                "items:read",
                "--expires",
                "2099-01-31",
                "--allow-ip",
                "203.0.113.0/24",
{%- if cookiecutter.use_rate_limiting %}
                "--rate-limit",
                "10/second",
{%- endif %}
            )
        ),
        "old": created_key(keys_cli("create", "old")),
    }
    assert keys_cli("revoke", "old").exit_code == 0
    return made


def assert_no_secret(text, made):
    for name, value in made.items():
        assert value not in text, name
        assert keys.hash_key(value) not in text, name
    assert keys.KEY_PREFIX + "_" not in text
    assert "sha256:" not in text


def test_list_shows_a_table_without_secrets(keys_cli, registry_path, three_keys):
    result = keys_cli("list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "FINGERPRINT",
        "SCOPES",
        "EXPIRES",
        "STATUS",
        "ALLOWED",
        "IPS",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"web", "partner", "old"}
    assert rows["web"][1:] == [keys.fingerprint(three_keys["web"]), "*", "-", "active", "-"]
    assert rows["partner"][1:] == [
        keys.fingerprint(three_keys["partner"]),
        "items:read",
        "2099-01-31T00:00:00+00:00",
        "active",
        "203.0.113.0/24",
    ]
    assert rows["old"][4] == "revoked"
    assert_no_secret(result.output, three_keys)


def test_list_json_is_for_scripts_and_holds_no_secret(keys_cli, registry_path, three_keys):
    result = keys_cli("list", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"web", "partner", "old"}
    partner = rows["partner"]
    assert partner["fingerprint"] == keys.fingerprint(three_keys["partner"])
    assert partner["scopes"] == ["items:read"]
    assert partner["expires"] == "2099-01-31T00:00:00+00:00"
    assert partner["status"] == "active"
    assert partner["allowed_ips"] == ["203.0.113.0/24"]
{%- if cookiecutter.use_rate_limiting %}
    assert partner["rate_limit"] == "10/second"
{%- endif %}
    assert datetime.fromisoformat(partner["created"]).tzinfo is not None
    assert rows["web"]["expires"] is None
    assert rows["old"]["status"] == "revoked"
    assert all("hash" not in row for row in rows.values())
    assert_no_secret(result.output, three_keys)


def test_list_of_an_empty_registry(keys_cli):
    result = keys_cli("list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No keys" in result.stderr
    assert json.loads(keys_cli("list", "--json").stdout) == []


def test_show_tells_everything_but_the_key(keys_cli, registry_path, three_keys):
    result = keys_cli("show", "partner")
    assert result.exit_code == 0
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields["name"] == "partner"
    assert fields["fingerprint"] == keys.fingerprint(three_keys["partner"])
    assert fields["scopes"] == "items:read"
    assert fields["expires"] == "2099-01-31T00:00:00+00:00"
    assert fields["status"] == "active"
    assert fields["allowed_ips"] == "203.0.113.0/24"
{%- if cookiecutter.use_rate_limiting %}
    assert fields["rate_limit"] == "10/second"
{%- endif %}
    assert_no_secret(result.output, three_keys)


@pytest.mark.parametrize("command", ["revoke", "rotate", "show"])
def test_unknown_name_is_one_error_and_touches_nothing(keys_cli, registry_path, command):
    created_key(keys_cli("create", "ci"))
    before = registry_path.read_bytes()
    result = keys_cli(command, "ghost")
    assert result.exit_code == 1
    assert "no key named 'ghost'" in one_error_line(result)
    assert registry_path.read_bytes() == before


def test_broken_registry_is_one_error_naming_file_and_line(keys_cli, registry_path):
    created_key(keys_cli("create", "ci"))
    registry_path.write_text(registry_path.read_text() + "\n[[keys]\n")
    before = registry_path.read_bytes()
    for args in (["list"], ["create", "web"], ["revoke", "ci"]):
        result = keys_cli(*args)
        assert result.exit_code == 1
        line = one_error_line(result)
        assert str(registry_path) in line
        assert "line" in line
    assert registry_path.read_bytes() == before


@pytest.mark.parametrize("args", [["list"], ["create", "ci"]])
def test_unreadable_registry_is_one_error_line(keys_cli, registry_path, args):
    result = keys_cli(*args, API_KEYS_FILE=str(registry_path.parent))
    assert result.exit_code == 1
    one_error_line(result)


# ---- revoke and rotate -------------------------------------------------------------------


def test_revoked_key_is_marked_in_the_registry(keys_cli, registry_path):
    created_key(keys_cli("create", "ci"))
    result = keys_cli("revoke", "ci")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "Revoked key 'ci'" in result.stderr
    stored = entries_of(registry_path)["ci"]
    assert stored.status(datetime.now(UTC)) == "revoked"


def test_rotate_prints_only_the_new_key(keys_cli, registry_path):
    old_key = created_key(
        keys_cli("create", "ci", "--scope", "items:read", "--allow-ip", "10.0.0.0/8")
    )
    result = keys_cli("rotate", "ci", "--grace", "1d")
    new_key = created_key(result)
    assert new_key != old_key
    assert old_key not in result.output
    stored = entries_of(registry_path)
    retired_name = f"ci.rotated-{keys.fingerprint(old_key)}"
    assert set(stored) == {"ci", retired_name}
    assert stored["ci"].hash == keys.hashed_entry(new_key)
    assert stored["ci"].scopes == ("items:read",)
    assert stored["ci"].allowed_ips == ("10.0.0.0/8",)
    retired = stored[retired_name]
    assert retired.status(datetime.now(UTC)) == "rotated"
    assert retired.expires - retired.rotated == timedelta(days=1)
    assert retired_name in result.stderr
    listed = {row["name"]: row["status"] for row in json.loads(keys_cli("list", "--json").stdout)}
    assert listed == {"ci": "active", retired_name: "rotated"}


def test_rotate_grace_defaults_to_seven_days(keys_cli, registry_path):
    old_key = created_key(keys_cli("create", "ci"))
    created_key(keys_cli("rotate", "ci"))
    retired = entries_of(registry_path)[f"ci.rotated-{keys.fingerprint(old_key)}"]
    assert retired.expires - retired.rotated == timedelta(days=7)


def test_stale_credential_rotated_with_zero_grace_is_revoked(keys_cli, registry_path):
    old_key = created_key(keys_cli("create", "ci"))
    result = keys_cli("rotate", "ci", "--grace", "0s")
    created_key(result)
    retired = entries_of(registry_path)[f"ci.rotated-{keys.fingerprint(old_key)}"]
    assert retired.status(datetime.now(UTC)) == "revoked"
    assert "revoked" in result.stderr


def test_rotate_grace_zero_as_written_in_the_spec(keys_cli, registry_path):
    old_key = created_key(keys_cli("create", "ci"))
    created_key(keys_cli("rotate", "ci", "--grace", "0"))
    retired = entries_of(registry_path)[f"ci.rotated-{keys.fingerprint(old_key)}"]
    assert retired.status(datetime.now(UTC)) == "revoked"


def test_bad_grace_is_one_error_and_touches_nothing(keys_cli, registry_path):
    created_key(keys_cli("create", "ci"))
    before = registry_path.read_bytes()
    result = keys_cli("rotate", "ci", "--grace", "soon")
    assert result.exit_code == 2
    assert "not a duration" in one_error_line(result)
    assert registry_path.read_bytes() == before


def test_stale_credential_revoked_key_cannot_be_rotated(keys_cli, registry_path):
    created_key(keys_cli("create", "ci"))
    keys_cli("revoke", "ci")
    before = registry_path.read_bytes()
    result = keys_cli("rotate", "ci")
    assert result.exit_code == 1
    assert "only an active key can be rotated" in one_error_line(result)
    assert registry_path.read_bytes() == before


# ---- check -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "stdin", "dash"])
def test_check_names_the_key_without_printing_it(keys_cli, how):
    new_key = created_key(keys_cli("create", "ci"))
    if how == "argument":
        result = keys_cli("check", new_key)
    else:
        args = ["check"] if how == "stdin" else ["check", "-"]
        result = keys_cli(*args, input=new_key + "\n")
    assert result.exit_code == 0
    assert "'ci'" in result.output
    assert "active" in result.output
    assert new_key not in result.output


@pytest.mark.parametrize(
    "presented",
    ["changeme", "hunter2-secret", keys.KEY_PREFIX + "_abc", keys.generate_key(OTHER_PREFIX)],
)
def test_check_of_a_malformed_key_does_not_echo_it(keys_cli, presented):
    for result in (keys_cli("check", presented), keys_cli("check", input=presented)):
        assert result.exit_code == 1
        assert "Not a well-formed key" in result.output
        assert presented not in result.output


def test_check_of_a_typo_is_malformed(keys_cli):
    new_key = created_key(keys_cli("create", "ci"))
    typo = new_key[:-1] + ("0" if new_key[-1] != "0" else "1")
    result = keys_cli("check", typo)
    assert result.exit_code == 1
    assert "Not a well-formed key" in result.output


def test_check_of_a_revoked_key_fails(keys_cli):
    new_key = created_key(keys_cli("create", "ci"))
    keys_cli("revoke", "ci")
    result = keys_cli("check", new_key)
    assert result.exit_code == 1
    assert "'ci'" in result.output
    assert "revoked" in result.output
    assert new_key not in result.output


def test_check_of_an_expired_key_fails(keys_cli, registry_key):
    now = datetime.now(UTC)
    old_key, _ = registry_key(
        "old", created=now - timedelta(days=2), expires=now - timedelta(days=1)
    )
    result = keys_cli("check", old_key)
    assert result.exit_code == 1
    assert "expired" in result.output


def test_check_of_a_rotated_key_in_its_grace_period_passes(keys_cli):
    old_key = created_key(keys_cli("create", "ci"))
    created_key(keys_cli("rotate", "ci"))
    result = keys_cli("check", old_key)
    assert result.exit_code == 0
    assert "rotated" in result.output


def test_check_of_an_unknown_key_fails(keys_cli):
    stranger = keys.generate_key()
    result = keys_cli("check", stranger)
    assert result.exit_code == 1
    assert "no configured key matches" in result.output
    assert stranger not in result.output


def test_check_finds_keys_of_api_keys(keys_cli):
    static = keys.generate_key()
    for api_keys in (static, keys.hashed_entry(static)):
        result = keys_cli("check", static, API_KEYS=api_keys)
        assert result.exit_code == 0
        assert "API_KEYS" in result.output
        assert static not in result.output


# ---- audit ------------------------------------------------------------------------------


def test_every_change_logs_one_audit_line_with_who_made_it(keys_cli):
    created_key(keys_cli("create", "ci"))
    result = keys_cli("create", "web")
    web_fp = keys.fingerprint(created_key(result))
    audit = [line for line in result.stderr.splitlines() if "audit" in line]
    assert len(audit) == 1
    assert f"keys create: name=web fingerprint={web_fp} by=auditor" in audit[0]

    result = keys_cli("revoke", "web")
    audit = [line for line in result.stderr.splitlines() if "audit" in line]
    assert len(audit) == 1
    assert f"keys revoke: name=web fingerprint={web_fp} by=auditor" in audit[0]

    result = keys_cli("rotate", "ci", USER="mallory")
    rotated_fp = keys.fingerprint(created_key(result))
    audit = [line for line in result.stderr.splitlines() if "audit" in line]
    assert len(audit) == 1
    assert "keys rotate: name=ci" in audit[0]
    assert "by=mallory" in audit[0]
    assert f"fingerprint={rotated_fp}" in audit[0]


def test_audit_line_in_json_for_log_collectors(keys_cli):
    result = keys_cli("create", "ci", LOG_FORMAT="json")
    new_key = created_key(result)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    line = lines[0]
    assert line["action"] == "create"
    assert line["key_name"] == "ci"
    assert line["fingerprint"] == keys.fingerprint(new_key)
    assert "by=auditor" in line["message"]
    assert new_key not in result.stderr


def test_reading_commands_log_no_audit_line(keys_cli):
    new_key = created_key(keys_cli("create", "ci"))
    for args in (["list"], ["list", "--json"], ["show", "ci"], ["check", new_key]):
        assert "audit" not in keys_cli(*args).stderr


@pytest.mark.parametrize("command", ["revoke", "show", "rotate"])
def test_credential_leak_a_key_pasted_as_a_name_is_never_echoed(keys_cli, command):
    pasted = keys.generate_key()
    result = keys_cli(command, pasted)
    assert result.exit_code != 0
    assert "API key, not a key name" in result.stderr
    assert pasted not in result.output + result.stderr
    assert pasted[len(keys.KEY_PREFIX) + 1 :][:20] not in result.output + result.stderr


def test_an_expiry_past_the_last_date_is_a_clear_error(keys_cli):
    result = keys_cli("create", "far", "--expires", "9999-12-31T23:00:00-05:00")
    assert result.exit_code == 2
    assert "out of range" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_an_ipv4_mapped_allowlist_is_stored_as_the_ipv4_network_it_means(keys_cli):
    created = keys_cli("create", "mapped", "--allow-ip", "::ffff:10.0.0.0/104")
    assert created.exit_code == 0, created.stderr
    listed = json.loads(keys_cli("list", "--json").stdout)
    assert listed[0]["allowed_ips"] == ["10.0.0.0/8"]
