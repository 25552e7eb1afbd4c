"""``flask keys``: create, list, show, revoke, rotate and check keys (cli.py), on the database.

A new key goes to stdout once and alone; everything else goes to stderr. A bad
argument, or a database that cannot be used, is one clear ``Error:`` line, a
non-zero exit, and an untouched registry.
"""

import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from {{ cookiecutter.package_name }} import keys, registry
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import ApiKey, RegistryVersion

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


def now():
    return datetime.now(UTC)


@pytest.fixture
def stored(app):
    """The registry's rows as the database holds them, current key first for each name."""

    def read():
        with app.app_context():
            return registry.all_keys(now=now())

    return read


@pytest.fixture
def current(stored):
    """The current key of each name (a rotated predecessor shares its name)."""

    def read():
        return {row.name: row for row in reversed(stored()) if row.rotated is None}

    return read


@pytest.fixture
def snapshot(app):
    """The registry's version and every column of every row: what "untouched" compares."""

    def read():
        with app.app_context():
            rows = db.session.execute(select(ApiKey.__table__).order_by("id")).all()
            return db.session.scalar(select(RegistryVersion.version)), [tuple(r) for r in rows]

    return read


# ---- create ----------------------------------------------------------------------------


def test_create_prints_the_key_alone_on_stdout(keys_cli, stored):
    result = keys_cli("create", "ci")
    new_key = created_key(result)
    [row] = stored()
    assert row.name == row.owner == "ci"
    assert row.digest == keys.hashed_entry(new_key)
    assert row.scopes == ["*"]
    assert row.expires is None
    assert keys.fingerprint(new_key) in result.stderr
    assert "for 'ci'" in result.stderr
    assert "shown once" in result.stderr
    assert new_key not in result.stderr


def test_create_for_an_owner(keys_cli, current):
    result = keys_cli("create", "ci-deploy", "--owner", "acme")
    created_key(result)
    assert current()["ci-deploy"].owner == "acme"
    assert "for 'acme'" in result.stderr


def test_create_help_says_that_no_scope_means_every_scope(keys_cli):
    result = keys_cli("create", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "Without --scope the key gets '*', every scope." in help_text
    options = ["--owner", "--scope", "--expires-in", "--expires", "--allow-ip"]
{%- if cookiecutter.use_rate_limiting %}
    options.append("--rate-limit")
{%- endif %}
    for option in options:
        assert option in help_text


def test_create_with_scopes_expiry_allowlist_and_limit(keys_cli, current):
    before = now().replace(microsecond=0)
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
    row = current()["partner"]
    assert row.scopes == ["items:read", "items:write"]
    assert before + timedelta(days=90) <= row.expires <= before + timedelta(days=90, seconds=5)
    assert row.allowed_ips == ["203.0.113.0/24", "2001:db8::/32"]
{%- if cookiecutter.use_rate_limiting %}
    assert row.rate_limit == "100/minute"
{%- endif %}


def test_create_with_an_expiry_date(keys_cli, current):
    created_key(keys_cli("create", "ci", "--expires", "2099-01-31"))
    assert current()["ci"].expires == datetime(2099, 1, 31, tzinfo=UTC)


def test_duplicate_name_is_refused_and_the_registry_unchanged(keys_cli, snapshot):
    first = created_key(keys_cli("create", "ci"))
    before = snapshot()
    result = keys_cli("create", "ci", "--owner", "someone-else")
    assert result.exit_code == 1
    assert "already exists" in one_error_line(result)
    assert snapshot() == before
    assert first not in result.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--expires-in", "90x"], 2, "not a duration"),
        (["--expires-in", "-1d"], 2, "not a duration"),
        (["--expires-in", "1.5d"], 2, "not a duration"),
        (["--expires", "31/01/2099"], 2, "not a date"),
        (["--expires", "2001-01-31"], 1, "must be in the future"),
        (["--expires-in", "0s"], 1, "must be in the future"),
        (["--expires-in", "1d", "--expires", "2099-01-31"], 2, "not both"),
        (["--expires-in", "0s", "--expires", "2099-01-31"], 2, "not both"),
        (["--allow-ip", "10.0.0.300"], 2, "not an IP address or CIDR"),
        (["--allow-ip", "10.0.0.0/33"], 2, "not an IP address or CIDR"),
        (["--allow-ip", "example.com"], 2, "not an IP address or CIDR"),
{%- if cookiecutter.use_rate_limiting %}
        (["--rate-limit", "lots"], 2, "not a rate limit"),
{%- endif %}
        (["--scope", "items read"], 1, "not a valid scope"),
        (["--owner", "acme corp"], 2, "not a valid key name"),
    ],
)
def test_bad_create_argument_is_one_error_and_touches_nothing(
    keys_cli, snapshot, args, exit_code, message
):
    created_key(keys_cli("create", "existing"))
    before = snapshot()
    result = keys_cli("create", "new", *args)
    assert result.exit_code == exit_code
    assert message in one_error_line(result)
    assert snapshot() == before


@pytest.mark.parametrize(
    "args",
    [
        ["create", "bad name"],
        ["create", "x", "--expires", "2001-01-01"],
        ["create", "x", "--expires-in", "99999999999d"],
        ["create", "x", "--expires-in", "9999999d"],
    ],
)
def test_refused_create_stores_nothing(keys_cli, snapshot, args):
    before = snapshot()
    result = keys_cli(*args)
    assert result.exit_code in (1, 2)
    one_error_line(result)
    assert snapshot() == before == (0, [])


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
                "--owner",
                "acme",
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


@pytest.fixture
def used(app):
    """Record use of key NAME in the registry, as a server's usage batch would."""

    def set_use(name, last_used, count):
        with app.app_context():
            db.session.execute(
                update(ApiKey)
                .where(ApiKey.name == name)
                .values(last_used=last_used, request_count=count)
            )
            db.session.commit()

    return set_use


def assert_no_secret(text, made):
    for name, value in made.items():
        assert value not in text, name
        assert keys.hash_key(value) not in text, name
    assert keys.KEY_PREFIX + "_" not in text
    assert "sha256:" not in text


def test_list_shows_owner_use_and_status_without_secrets(keys_cli, three_keys, used):
    used("partner", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), 1234)
    result = keys_cli("list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "OWNER",
        "FINGERPRINT",
        "SCOPES",
        "EXPIRES",
        "STATUS",
        "LAST",
        "USED",
        "REQUESTS",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"web", "partner", "old"}
    assert rows["web"][1:] == [
        "web",
        keys.fingerprint(three_keys["web"]),
        "*",
        "-",
        "active",
        "-",
        "0",
    ]
    assert rows["partner"][1:] == [
        "acme",
        keys.fingerprint(three_keys["partner"]),
        "items:read",
        "2099-01-31T00:00:00+00:00",
        "active",
        "2030-01-02T03:04:05+00:00",
        "1234",
    ]
    assert rows["old"][5] == "revoked"
    assert_no_secret(result.output, three_keys)


def test_list_json_is_for_scripts_and_holds_no_secret(keys_cli, three_keys, used):
    used("partner", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), 1234)
    result = keys_cli("list", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"web", "partner", "old"}
    for row in rows.values():
        assert {"name", "owner", "fingerprint", "scopes", "expires", "status", "last_used"} <= set(
            row
        )
    partner = rows["partner"]
    assert partner["owner"] == "acme"
    assert partner["fingerprint"] == keys.fingerprint(three_keys["partner"])
    assert partner["scopes"] == ["items:read"]
    assert partner["expires"] == "2099-01-31T00:00:00+00:00"
    assert partner["status"] == "active"
    assert partner["allowed_ips"] == ["203.0.113.0/24"]
{%- if cookiecutter.use_rate_limiting %}
    assert partner["rate_limit"] == "10/second"
{%- endif %}
    assert partner["last_used"] == "2030-01-02T03:04:05+00:00"
    assert partner["requests"] == 1234
    assert datetime.fromisoformat(partner["created"]).tzinfo is not None
    assert rows["web"]["owner"] == "web"
    assert rows["web"]["expires"] is None
    assert rows["web"]["last_used"] is None
    assert rows["web"]["requests"] == 0
    assert rows["old"]["status"] == "revoked"
    assert all("hash" not in row and "digest" not in row for row in rows.values())
    assert_no_secret(result.output, three_keys)


def test_list_of_an_empty_registry(keys_cli):
    result = keys_cli("list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No keys" in result.stderr
    assert json.loads(keys_cli("list", "--json").stdout) == []


def test_list_unused_finds_stale_keys(keys_cli, registry_key, used):
    long_ago = now() - timedelta(days=200)
    registry_key("never-used", created=long_ago)
    registry_key("used-long-ago", created=long_ago)
    registry_key("used-lately", created=long_ago)
    registry_key("brand-new")
    used("used-long-ago", now() - timedelta(days=120), 5)
    used("used-lately", now() - timedelta(days=1), 5)
    result = keys_cli("list", "--unused", "90d", "--json")
    assert result.exit_code == 0
    assert [row["name"] for row in json.loads(result.stdout)] == ["never-used", "used-long-ago"]
    table = keys_cli("list", "--unused", "90d").stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == ["never-used", "used-long-ago"]
    nothing = keys_cli("list", "--unused", "300d")
    assert nothing.exit_code == 0
    assert nothing.stdout == ""
    assert "No unused keys" in nothing.stderr


def test_list_unused_needs_a_duration(keys_cli):
    result = keys_cli("list", "--unused", "90 days")
    assert result.exit_code == 2
    assert "not a duration" in one_error_line(result)


def test_show_tells_everything_but_the_key(keys_cli, three_keys):
    result = keys_cli("show", "partner")
    assert result.exit_code == 0
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields["name"] == "partner"
    assert fields["owner"] == "acme"
    assert fields["fingerprint"] == keys.fingerprint(three_keys["partner"])
    assert fields["scopes"] == "items:read"
    assert fields["expires"] == "2099-01-31T00:00:00+00:00"
    assert fields["status"] == "active"
    assert fields["allowed_ips"] == "203.0.113.0/24"
{%- if cookiecutter.use_rate_limiting %}
    assert fields["rate_limit"] == "10/second"
{%- endif %}
    assert fields["last_used"] == "-"
    assert fields["requests"] == "0"
    assert_no_secret(result.output, three_keys)


@pytest.mark.parametrize("command", ["revoke", "rotate", "show"])
def test_unknown_name_is_one_error_and_touches_nothing(keys_cli, snapshot, command):
    created_key(keys_cli("create", "ci"))
    before = snapshot()
    result = keys_cli(command, "ghost")
    assert result.exit_code == 1
    assert "no key named 'ghost'" in one_error_line(result)
    assert snapshot() == before


# ---- a database that cannot be used ------------------------------------------------------


def closed_port():
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(params=["empty-sqlite-file", "closed-postgresql-port"])
def unusable_database(request, tmp_path):
    """DATABASE_URL of a database never migrated, or of a PostgreSQL nobody listens on."""
    if request.param == "empty-sqlite-file":
        (tmp_path / "empty.db").touch()
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return f"postgresql+psycopg://keys:hunter2@127.0.0.1:{closed_port()}/registry"


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--unused", "90d", "--json"],
        ["create", "ci"],
        ["rotate", "ci"],
        ["revoke", "ci"],
        ["show", "ci"],
    ],
)
def test_unusable_database_is_one_clear_error_line(keys_cli, unusable_database, args):
    result = keys_cli(*args, app_environ={"APP_ENV": "testing", "DATABASE_URL": unusable_database})
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "DATABASE_URL" in line
    assert "flask db upgrade" in line
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_check_on_an_unusable_database_is_one_line_without_the_key(keys_cli, app):
    with app.app_context():  # the registry's tables are gone from under the command
        db.drop_all()
    presented = keys.generate_key()
    for result in (keys_cli("check", presented), keys_cli("check", input=presented)):
        assert result.exit_code == 1
        assert "DATABASE_URL" in one_error_line(result)
        assert presented not in result.output


# ---- revoke and rotate -------------------------------------------------------------------


def test_revoked_key_is_marked_in_the_registry(keys_cli, current):
    created_key(keys_cli("create", "ci"))
    result = keys_cli("revoke", "ci")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "Revoked key 'ci'" in result.stderr
    assert registry.status(current()["ci"], now()) == registry.KeyStatus.REVOKED


def test_rotate_prints_only_the_new_key_and_lists_both(keys_cli, stored):
    old_key = created_key(
        keys_cli(
            "create", "ci", "--owner", "acme", "--scope", "items:read", "--allow-ip", "10.0.0.0/8"
        )
    )
    result = keys_cli("rotate", "ci", "--grace", "1d")
    new_key = created_key(result)
    assert new_key != old_key
    assert old_key not in result.output
    successor, retired = stored()
    assert successor.digest == keys.hashed_entry(new_key)
    assert (successor.name, successor.owner) == ("ci", "acme")
    assert successor.scopes == ["items:read"]
    assert successor.allowed_ips == ["10.0.0.0/8"]
    assert (retired.name, retired.owner) == ("ci", "acme")
    assert retired.digest == keys.hashed_entry(old_key)
    assert registry.status(retired, now()) == registry.KeyStatus.ROTATED
    assert retired.expires - retired.rotated == timedelta(days=1)
    assert keys.fingerprint(old_key) in result.stderr
    assert "listed as rotated" in result.stderr
    listed = [
        (row["name"], row["owner"], row["fingerprint"], row["status"])
        for row in json.loads(keys_cli("list", "--json").stdout)
    ]
    assert listed == [
        ("ci", "acme", keys.fingerprint(new_key), "active"),
        ("ci", "acme", keys.fingerprint(old_key), "rotated"),
    ]


def test_rotate_grace_defaults_to_seven_days(keys_cli, stored):
    created_key(keys_cli("create", "ci"))
    created_key(keys_cli("rotate", "ci"))
    retired = stored()[1]
    assert retired.expires - retired.rotated == timedelta(days=7)


@pytest.mark.parametrize("grace", ["0s", "0"])  # "0" as the SPEC writes it
def test_stale_credential_rotated_with_zero_grace_is_revoked(keys_cli, stored, grace):
    old_key = created_key(keys_cli("create", "ci"))
    result = keys_cli("rotate", "ci", "--grace", grace)
    created_key(result)
    retired = stored()[1]
    assert retired.digest == keys.hashed_entry(old_key)
    assert registry.status(retired, now()) == registry.KeyStatus.REVOKED
    assert "revoked" in result.stderr


def test_bad_grace_is_one_error_and_touches_nothing(keys_cli, snapshot):
    created_key(keys_cli("create", "ci"))
    before = snapshot()
    result = keys_cli("rotate", "ci", "--grace", "soon")
    assert result.exit_code == 2
    assert "not a duration" in one_error_line(result)
    assert snapshot() == before


def test_stale_credential_revoked_key_cannot_be_rotated(keys_cli, snapshot):
    created_key(keys_cli("create", "ci"))
    keys_cli("revoke", "ci")
    before = snapshot()
    result = keys_cli("rotate", "ci")
    assert result.exit_code == 1
    assert "only an active key can be rotated" in one_error_line(result)
    assert snapshot() == before


# ---- check -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "stdin", "dash"])
def test_check_names_the_key_without_printing_it(keys_cli, how):
    new_key = created_key(keys_cli("create", "ci", "--owner", "acme"))
    if how == "argument":
        result = keys_cli("check", new_key)
    else:
        args = ["check"] if how == "stdin" else ["check", "-"]
        result = keys_cli(*args, input=new_key + "\n")
    assert result.exit_code == 0
    assert "'ci' of 'acme'" in result.output
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
    old_key, _ = registry_key(
        "old", created=now() - timedelta(days=2), expires=now() - timedelta(days=1)
    )
    result = keys_cli("check", old_key)
    assert result.exit_code == 1
    assert "expired" in result.output


def test_check_of_a_rotated_key_in_its_grace_period_passes(keys_cli):
    old_key = created_key(keys_cli("create", "ci"))
    created_key(keys_cli("rotate", "ci"))
    result = keys_cli("check", old_key)
    assert result.exit_code == 0
    assert "'ci'" in result.output
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


def audit_lines(result):
    return [line for line in result.stderr.splitlines() if "audit" in line]


def test_every_change_logs_one_audit_line_with_who_made_it(keys_cli):
    created_key(keys_cli("create", "ci"))
    result = keys_cli("create", "web", "--owner", "acme")
    web_fp = keys.fingerprint(created_key(result))
    [line] = audit_lines(result)
    assert f"keys create: name=web owner=acme fingerprint={web_fp} by=auditor" in line

    result = keys_cli("revoke", "web")
    [line] = audit_lines(result)
    assert f"keys revoke: name=web owner=acme fingerprint={web_fp} by=auditor" in line

    result = keys_cli("rotate", "ci", USER="mallory")
    rotated_fp = keys.fingerprint(created_key(result))
    [line] = audit_lines(result)
    assert "keys rotate: name=ci owner=ci" in line
    assert "by=mallory" in line
    assert f"fingerprint={rotated_fp}" in line


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
    for args in (["list"], ["list", "--json"], ["list", "--unused", "1d"], ["show", "ci"]):
        assert "audit" not in keys_cli(*args).stderr
    assert "audit" not in keys_cli("check", new_key).stderr


@pytest.mark.parametrize(
    "args",
    [
        ["revoke", "{key}"],
        ["show", "{key}"],
        ["rotate", "{key}"],
        ["create", "{key}"],
        ["create", "ci", "--owner", "{key}"],
    ],
)
def test_credential_leak_a_key_pasted_as_a_name_is_never_echoed(keys_cli, snapshot, args):
    pasted = keys.generate_key()
    before = snapshot()
    result = keys_cli(*[arg.format(key=pasted) for arg in args])
    assert result.exit_code != 0
    assert "API key, not a key name" in result.stderr
    assert pasted not in result.output + result.stderr
    assert pasted[len(keys.KEY_PREFIX) + 1 :][:20] not in result.output + result.stderr
    assert snapshot() == before


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
