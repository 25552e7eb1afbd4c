"""Owners' limits: one limit shared by all of an owner's keys, beside each key's own.

``flask keys owner-limit`` (cli.py) stores it in the registry (registry.py), every
server process holds it beside the keys (keystore.py), and each request of each of
the owner's keys counts against it in the same storage call as the key's own limit
(ratelimit.py). These use memory:// storage; the template's own tests run an owner's
limit against a real Redis shared by two gunicorn workers, and across a restart.
"""

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select, update

from {{ cookiecutter.package_name }} import create_app, keys, registry
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import OwnerLimit, RegistryVersion


def now():
    return datetime.now(UTC)


def on_another_host(change):
    """A registry change made as another host (or `flask keys`) makes it: through an app
    of its own on the same database."""
    with create_app({"APP_ENV": "testing"}).app_context():
        return change()


def whoami(client, key):
    return client.get("/v1/whoami", headers={API_KEY_HEADER: key})


def standing(response):
    """RateLimit's policy, remaining and reset, as text: ``"owner";r=2;t=3600``."""
    return response.headers["RateLimit"].rsplit(";t=", 1)[0]


@pytest.fixture
def acme(registry_key):
    """Two keys of the owner acme, each with the default limit; and a key of globex."""
    first, _ = registry_key("acme-web", owner="acme")
    second, _ = registry_key("acme-ci", owner="acme")
    other, _ = registry_key("globex-web", owner="globex")
    return first, second, other


# ---- counted against the owner -----------------------------------------------------------


def test_an_owner_limit_is_shared_by_all_its_keys(make_app, acme):
    """More keys buy no more requests: acme's two keys share its 4/hour between them."""
    first, second, other = acme
    on_another_host(lambda: registry.set_owner_limit("acme", "4/hour"))
    client = make_app(RATELIMIT_DEFAULT="100/hour").test_client()

    answers = [whoami(client, key) for key in (first, second, first, second, first, second)]

    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429, 429]
    assert [standing(r) for r in answers[:4]] == [f'"owner";r={n}' for n in (3, 2, 1, 0)]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"4"}
    assert answers[-1].json["error"] == "rate_limited"
    assert answers[-1].json["violated-policies"] == ["owner"]
    # Another owner's key is not held back, and reports its own limit.
    assert whoami(client, other).status_code == 200
    assert standing(whoami(client, other)) == '"key";r=98'


def test_the_limit_closest_to_running_out_is_reported_and_refuses(make_app, registry_key):
    """A key's own 2/hour runs out first, then its owner's 4/hour, which every key of the
    owner then meets; refused requests count too."""
    tight, _ = registry_key("acme-tight", owner="acme", rate_limit="2/hour")
    loose, _ = registry_key("acme-loose", owner="acme", rate_limit="100/hour")
    on_another_host(lambda: registry.set_owner_limit("acme", "4/hour"))
    client = make_app().test_client()

    answers = [whoami(client, key) for key in (tight, tight, tight, loose, loose)]

    assert [r.status_code for r in answers] == [200, 200, 429, 200, 429]
    # The key's own limit, then the owner's, each when it is the closer one.
    assert [standing(r) for r in answers] == [
        '"key";r=1',
        '"key";r=0',
        '"key";r=0',
        '"owner";r=0',
        '"owner";r=0',
    ]
    assert [r.headers["X-RateLimit-Limit"] for r in answers] == ["2", "2", "2", "4", "4"]
    for response in answers:
        policies = response.headers["RateLimit-Policy"]
        assert policies.endswith('"owner";q=4;w=3600'), policies
    refused_by_owner = answers[-1]
    assert 1 <= int(refused_by_owner.headers["Retry-After"]) <= 3600


def test_of_two_spent_limits_the_one_that_lasts_longer_is_reported(make_app, registry_key):
    """A key over its 1/minute whose owner's 2/day is spent too: waiting for the minute
    would not help, so the day is what Retry-After and RateLimit report."""
    busy, _ = registry_key("acme-busy", owner="acme", rate_limit="1/minute")
    other, _ = registry_key("acme-other", owner="acme")
    on_another_host(lambda: registry.set_owner_limit("acme", "2/day"))
    client = make_app().test_client()
    assert whoami(client, other).status_code == 200
    assert whoami(client, busy).status_code == 200  # the owner's 2/day is now spent
    refused = whoami(client, busy)  # over the key's minute and at the owner's day
    assert refused.status_code == 429
    assert standing(refused) == '"owner";r=0'
    assert int(refused.headers["Retry-After"]) > 3600


def test_a_long_window_such_as_a_month_is_counted_and_reported(make_app, acme):
    first, second, _ = acme
    on_another_host(lambda: registry.set_owner_limit("acme", "3/month"))
    client = make_app().test_client()
    answers = [whoami(client, key) for key in (first, second, first, second)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    month = 30 * 24 * 3600
    assert f'"owner";q=3;w={month}' in answers[0].headers["RateLimit-Policy"]
    seconds_left = int(answers[0].headers["RateLimit"].rsplit(";t=", 1)[1])
    assert month - 5 <= seconds_left <= month
    assert month - 5 <= int(answers[-1].headers["Retry-After"]) <= month


def test_an_owner_limit_is_counted_under_the_owners_name_never_a_key(make_app, acme):
    """One counter for the owner, however many keys; no key in any counter's name
    (credential leak)."""
    first, second, _ = acme
    on_another_host(lambda: registry.set_owner_limit("acme", "10/hour"))
    app = make_app()
    client = app.test_client()
    for key in (first, second):
        whoami(client, key)
    counters = list(app.extensions["rate_limiter"].storage._windows)
    assert len([name for name in counters if "/owner/acme/" in name]) == 1
    for key in (first, second):
        assert not any(key in name or key[-20:] in name for name in counters)


# ---- the key store follows the registry --------------------------------------------------


def test_a_change_reaches_a_running_server_without_a_restart(make_app, acme, wait_for):
    """Set, tightened, cleared: each applied by a running app within about a second, with
    no call to refresh (the refresher thread of the process does it)."""
    first, _, _ = acme
    client = make_app().test_client()
    assert standing(whoami(client, first)).startswith('"key";')

    on_another_host(lambda: registry.set_owner_limit("acme", "50/hour"))
    wait_for(lambda: standing(whoami(client, first)).startswith('"owner";'), seconds=3)
    on_another_host(lambda: registry.set_owner_limit("acme", "1/hour"))
    wait_for(lambda: whoami(client, first).status_code == 429, seconds=3)
    on_another_host(lambda: registry.clear_owner_limit("acme"))
    wait_for(lambda: whoami(client, first).status_code == 200, seconds=3)
    assert '"owner"' not in whoami(client, first).headers["RateLimit-Policy"]


def test_the_request_path_reads_no_database_for_an_owner_limit(make_app, acme):
    """The owner's limit comes from the process's memory: a request never asks the
    database for it (only the refresher does, when the registry changed)."""
    first, second, _ = acme
    on_another_host(lambda: registry.set_owner_limit("acme", "100/hour"))
    app = make_app()
    client = app.test_client()
    whoami(client, first)  # a process's first request reads the registry once
    with app.app_context():
        engine = db.engine
    here = threading.get_ident()
    read = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() == here:
            read.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        answers = [whoami(client, key) for key in (first, second) * 3]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert {standing(r).split(";")[0] for r in answers} == {'"owner"'}
    assert not [statement for statement in read if "owner_limits" in statement]


def test_a_limit_edited_by_hand_past_the_checks_is_ignored_and_logged(make_app, acme, logs):
    """A row no registry function would write: the owner's keys keep their own limits,
    every other change is still served, and the operator is told."""
    first, _, _ = acme
    app = make_app(RATELIMIT_DEFAULT="100/hour")

    def corrupt():
        registry.set_owner_limit("acme", "5/hour")
        with registry.changing() as version:
            db.session.execute(update(OwnerLimit).values(rate_limit="lots", version=version))

    on_another_host(corrupt)
    logs.attach()  # the other host's app set up logging anew
    app.extensions["api_keys"].refresh()
    answer = whoami(app.test_client(), first)
    assert answer.status_code == 200
    assert standing(answer) == '"key";r=99'
    errors = [line for line in logs.lines if " ERROR " in line and "acme" in line]
    assert len(errors) == 1 and "lots" in errors[0], logs.text


# ---- the registry ----------------------------------------------------------------------


def registry_version():
    return db.session.scalar(select(RegistryVersion.version))


def test_set_change_and_clear_each_bump_the_registry_version():
    with create_app({"APP_ENV": "testing"}).app_context():
        versions = [registry_version()]
        registry.set_owner_limit("acme", "10000/month")
        versions.append(registry_version())
        assert registry.owner_limit("acme") == "10000/month"
        registry.set_owner_limit("acme", "100/minute;10000/month")
        versions.append(registry_version())
        assert registry.owner_limits() == {"acme": "100/minute;10000/month"}
        assert registry.clear_owner_limit("acme") == "100/minute;10000/month"
        versions.append(registry_version())
        assert registry.owner_limit("acme") is None
        assert registry.owner_limits() == {}
        assert versions == sorted(set(versions))  # each change a version of its own


@pytest.mark.parametrize("limit", ["lots", "10 per fortnight", "100/minute; often", ""])
def test_a_bad_owner_limit_is_refused_as_a_key_limit_is(limit):
    with create_app({"APP_ENV": "testing"}).app_context():
        before = registry_version()
        with pytest.raises(registry.RegistryError) as refused:
            registry.set_owner_limit("acme", limit)
        if limit:  # the very message `flask keys create --rate-limit` gives
            with pytest.raises(registry.RegistryError) as as_key:
                registry.check_rate_limit(limit)
            assert str(refused.value) == str(as_key.value)
        assert registry.owner_limit("acme") is None
        assert registry_version() == before


def test_clearing_an_owner_without_a_limit_is_refused():
    with create_app({"APP_ENV": "testing"}).app_context():
        before = registry_version()
        with pytest.raises(registry.RegistryError, match="'acme' has no limit of its own"):
            registry.clear_owner_limit("acme")
        registry.set_owner_limit("acme", "5/hour")
        registry.clear_owner_limit("acme")
        with pytest.raises(registry.RegistryError, match="no limit of its own"):
            registry.clear_owner_limit("acme")
        assert registry_version() == before + 2


def test_credential_leak_a_key_pasted_as_an_owner_is_never_echoed():
    pasted = keys.generate_key()
    with create_app({"APP_ENV": "testing"}).app_context():
        for change in (
            lambda: registry.set_owner_limit(pasted, "5/hour"),
            lambda: registry.clear_owner_limit(pasted),
            lambda: registry.owner_limit(pasted),
        ):
            with pytest.raises(registry.RegistryError) as refused:
                change()
            assert pasted not in str(refused.value)
            assert pasted[-20:] not in str(refused.value)


# ---- flask keys owner-limit --------------------------------------------------------------


def audit_lines(result):
    return [line for line in result.stderr.splitlines() if "audit" in line]


def test_cli_sets_shows_lists_and_clears_with_one_audit_line_each(keys_cli, acme):
    result = keys_cli("owner-limit", "acme", "10000/month")
    assert result.exit_code == 0, result.output
    assert not result.stdout
    assert "10000/month" in result.stderr and "2 keys" in result.stderr
    [line] = audit_lines(result)
    assert "keys owner-limit: owner=acme limit=10000/month by=auditor" in line

    shown = keys_cli("owner-limit", "acme")
    assert shown.exit_code == 0 and not audit_lines(shown)
    assert shown.stdout == "acme: 10000/month (2 keys)\n"
    keys_cli("owner-limit", "globex", "5/second")
    listed = keys_cli("owner-limit")
    assert listed.stdout.split() == ["acme", "10000/month", "globex", "5/second"]

    cleared = keys_cli("owner-limit", "acme", "--clear", USER="mallory")
    assert cleared.exit_code == 0, cleared.output
    assert "was 10000/month" in cleared.stderr
    [line] = audit_lines(cleared)
    assert "keys owner-limit-clear: owner=acme limit=- by=mallory" in line
    assert keys_cli("owner-limit", "acme").stdout == "acme: no limit of its own (2 keys)\n"
    assert keys_cli("owner-limit").stdout.split() == ["globex", "5/second"]


def test_cli_warns_of_an_owner_with_no_key(keys_cli):
    """Probably a typo: the limit is stored (keys made later count against it), with a
    warning."""
    result = keys_cli("owner-limit", "acmee", "5/hour")
    assert result.exit_code == 0, result.output
    assert "Warning: no key belongs to 'acmee' yet" in result.stderr


def test_cli_lists_nothing_without_owner_limits(keys_cli):
    result = keys_cli("owner-limit")
    assert result.exit_code == 0 and not result.stdout
    assert "No owner has a limit of its own." in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["acme", "lots"], 2, "'lots' is not a rate limit such as 100/minute"),
        (["acme", "10/hour", "--clear"], 2, "give LIMIT or --clear, not both"),
        (["--clear"], 2, "--clear needs the OWNER"),
        (["acme", "--clear"], 1, "owner 'acme' has no limit of its own"),
        (["a b", "10/hour"], 2, "not a valid key name"),
    ],
)
def test_cli_errors_are_one_line_and_change_nothing(keys_cli, app, args, status, message):
    with app.app_context():
        before = registry_version()
    result = keys_cli("owner-limit", *args)
    assert result.exit_code == status, result.output
    assert not result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not audit_lines(result)
    with app.app_context():
        assert registry_version() == before
        assert registry.owner_limits() == {}


def test_cli_credential_leak_a_key_pasted_as_the_owner_is_never_echoed(keys_cli):
    pasted = keys.generate_key()
    for args in ([pasted, "5/hour"], [pasted], [pasted, "--clear"]):
        result = keys_cli("owner-limit", *args)
        assert result.exit_code != 0
        assert pasted not in result.output and pasted[-20:] not in result.output
