"""Rate limits (ratelimit.py): each key's own limit, a cap on failed authentications per
client IP, the standard headers, and fail-closed behaviour when the storage is down.

These use memory:// storage; the template's own tests run the same against a real Redis
shared by several gunicorn workers.
"""

import dataclasses
import re
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from flask import g
from limits import RateLimitItemPerHour, RateLimitItemPerSecond
from problems import problem

from {{ cookiecutter.package_name }} import ConfigError, create_app, keys, registry
from {{ cookiecutter.package_name }}.auth import require_api_key
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.ratelimit import (
    Counter,
    MemoryStorage,
    RateLimiter,
    client_network,
    rate_limit,
)

HTTPS = "https://localhost"
ATTACKER = {"REMOTE_ADDR": "203.0.113.7"}
NEIGHBOUR = {"REMOTE_ADDR": "198.51.100.9"}


def whoami(client, key, environ_base=None):
    headers = {API_KEY_HEADER: key} if key else {}
    return client.get("/v1/whoami", headers=headers, environ_base=environ_base or {})


def refused(response, status, code):
    return response.status_code == status and response.json["error"] == code


def test_a_key_gets_its_limit_then_429_with_retry_after(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="3/hour").test_client()
    answers = [whoami(client, key) for _ in range(4)]
    assert [response.status_code for response in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    document = problem(limited, 429, "rate_limited")
    # The IETF draft's registered problem type, naming the spent policy.
    assert document["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert document["violated-policies"] == ["key"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_limited_responses_carry_the_rate_limit_headers(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="5/hour").test_client()
    answers = [whoami(client, key) for _ in range(3)]
    assert [r.headers["X-RateLimit-Limit"] for r in answers] == ["5", "5", "5"]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["4", "3", "2"]
    resets = {int(r.headers["X-RateLimit-Reset"]) for r in answers}
    assert len(resets) == 1
    assert "Retry-After" not in answers[0].headers


def test_an_error_from_the_view_carries_the_rate_limit_headers_once(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="5/hour").test_client()
    response = client.post(
        "/v1/items",
        data="{not json",
        headers={API_KEY_HEADER: key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers.getlist("X-RateLimit-Limit") == ["5"]
    assert response.headers.getlist("X-RateLimit-Remaining") == ["4"]


def test_each_key_has_its_own_counter(make_app, key, issue_key):
    app = make_app(RATELIMIT_DEFAULT="2/hour")
    other = issue_key(app, name="other")
    client = app.test_client()
    assert [whoami(client, key).status_code for _ in range(3)] == [200, 200, 429]
    assert [whoami(client, other).status_code for _ in range(2)] == [200, 200]


def test_a_registry_limit_overrides_the_default(make_app, registry_key):
    limited, _ = registry_key("partner", rate_limit="2/hour")
    client = make_app(RATELIMIT_DEFAULT="100/hour").test_client()
    answers = [whoami(client, limited) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "2"


def test_credential_leak_counters_are_keyed_by_fingerprint_not_key(make_app, key):
    app = make_app(RATELIMIT_DEFAULT="5/hour")
    client = app.test_client()
    whoami(client, key)
    whoami(client, keys.generate_key(), environ_base=ATTACKER)
    counters = list(app.extensions["rate_limiter"].storage._windows)
    assert any(keys.fingerprint(key) in counter for counter in counters)
    assert not any(key in counter or key[-20:] in counter for counter in counters)


def test_brute_force_is_cut_off_after_the_failure_limit(make_app, key):
    client = make_app(AUTH_FAILURE_LIMIT="5/hour").test_client()
    guesses = [whoami(client, keys.generate_key(), ATTACKER) for _ in range(12)]
    statuses = [response.status_code for response in guesses]
    assert statuses == [401] * 5 + [429] * 7
    assert int(guesses[-1].headers["Retry-After"]) >= 1
    # Once cut off, even a right key from that client waits; other clients do not.
    assert refused(whoami(client, key, ATTACKER), 429, "rate_limited")
    assert whoami(client, key, NEIGHBOUR).status_code == 200


def test_a_cut_off_client_learns_nothing_from_a_right_key(make_app, issue_key):
    """Once cut off, a valid key that would get 403 also gets 429: no oracle for guesses."""
    app = make_app(AUTH_FAILURE_LIMIT="2/hour")
    reader = issue_key(app, name="reader", scopes=frozenset({"items:read"}))
    client = app.test_client()
    for _ in range(3):
        whoami(client, keys.generate_key(), ATTACKER)
    response = client.post(
        "/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader}, environ_base=ATTACKER
    )
    assert refused(response, 429, "rate_limited")
    assert refused(whoami(client, reader, ATTACKER), 429, "rate_limited")


def test_several_limits_report_the_one_closest_to_running_out(make_app, registry_key):
    limited, _ = registry_key("partner", rate_limit="100/hour;2/minute")
    client = make_app().test_client()
    answers = [whoami(client, limited) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Limit"] for r in answers] == ["2", "2", "2"]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
    assert int(answers[-1].headers["Retry-After"]) <= 60


def test_missing_keys_count_as_failures_too(make_app):
    client = make_app(AUTH_FAILURE_LIMIT="2/hour").test_client()
    statuses = [whoami(client, None, ATTACKER).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_refusals_of_a_valid_key_are_not_counted_as_guesses(make_app, issue_key):
    app = make_app(AUTH_FAILURE_LIMIT="2/hour")
    reader = issue_key(app, name="reader", scopes=frozenset({"items:read"}))
    client = app.test_client()
    for _ in range(4):
        response = client.post(
            "/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader}, environ_base=ATTACKER
        )
        assert refused(response, 403, "insufficient_scope")
    assert whoami(client, reader, ATTACKER).status_code == 200


def test_public_routes_are_not_limited(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="1/hour", AUTH_FAILURE_LIMIT="1/hour").test_client()
    for _ in range(2):
        whoami(client, keys.generate_key(), ATTACKER)
    for path in ("/health", "/ready", "/openapi.json"):
        answers = [client.get(path, environ_base=ATTACKER) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5
        assert "X-RateLimit-Limit" not in answers[0].headers


def test_the_documented_defaults(key):
    config = create_app({"APP_ENV": "testing", "API_KEYS": key}).config
    assert config["RATELIMIT_DEFAULT"] == "60/minute"
    assert config["AUTH_FAILURE_LIMIT"] == "10/minute"
    assert config["RATELIMIT_STORAGE_URI"] == "memory://"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATELIMIT_DEFAULT", "lots"),
        ("AUTH_FAILURE_LIMIT", "10 per fortnight"),
        ("RATELIMIT_STORAGE_URI", "postgres://user:hunter2@db/0"),
    ],
)
def test_bad_limit_settings_stop_the_app(key, name, value):
    with pytest.raises(ConfigError, match=name) as raised:
        create_app({"APP_ENV": "testing", "API_KEYS": key, name: value})
    assert "hunter2" not in str(raised.value)


def closed_port():
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_storage_fails_closed_with_503(make_app, key, logs):
    storage = f"redis://127.0.0.1:{closed_port()}/0"
    client = make_app(RATELIMIT_STORAGE_URI=storage, RATELIMIT_DEFAULT="5/hour").test_client()
    answers = [whoami(client, key) for _ in range(3)]
    for response in answers:
        assert refused(response, 503, "rate_limit_unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        assert "Traceback" not in response.get_data(as_text=True)
    # Public routes still answer, and the outage is logged once, not per request.
    assert client.get("/health").status_code == 200
    errors = [line for line in logs.lines if " ERROR " in line and "rate-limit" in line]
    assert len(errors) == 1


def test_ready_is_503_naming_redis_when_it_cannot_be_reached(make_app, logs):
    port = closed_port()
    storage = f"redis://:hunter2@localhost:{port}/0"
    client = make_app(RATELIMIT_STORAGE_URI=storage).test_client()
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json["error"] == "not_ready"
    assert "redis" in response.json["message"]
    assert "database" not in response.json["message"]  # the database answers
    for detail in ("hunter2", f":{port}", "localhost"):
        assert detail not in response.get_data(as_text=True)
        assert detail not in logs.text
    assert client.get("/health").status_code == 200


def test_rate_limits_are_documented_in_openapi(client):
    document = client.get("/openapi.json").json
    responses = document["paths"]["/v1/secure-data"]["get"]["responses"]
    assert {"429", "503"} <= set(responses)


def test_refused_requests_still_name_their_key_in_the_access_line(make_app, key, logs):
    client = make_app(RATELIMIT_DEFAULT="1/hour", AUTH_FAILURE_LIMIT="1/hour").test_client()
    whoami(client, key)
    assert whoami(client, key).status_code == 429
    guess = keys.generate_key()
    whoami(client, guess, ATTACKER)
    assert whoami(client, guess, ATTACKER).status_code == 429
    access = [line for line in logs.lines if ".access" in line and " 429 " in line]
    assert len(access) == 2
    assert "key=api-keys-1" in access[0]
    assert f"key={keys.fingerprint(guess)}" in access[1]


def test_a_window_ends_and_counting_starts_again(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="2/second").test_client()
    # Start at the beginning of a window, so that all three fall inside it.
    first = whoami(client, key)
    assert [first.status_code, whoami(client, key).status_code] == [200, 200]
    assert whoami(client, key).status_code == 429
    time.sleep(max(0.0, int(first.headers["X-RateLimit-Reset"]) - time.time()) + 0.05)
    assert whoami(client, key).status_code == 200


def test_refusals_of_a_valid_key_count_against_its_limit(make_app, issue_key):
    """A key looping on 403 (missing scope, wrong address) is limited like any other."""
    app = make_app(RATELIMIT_DEFAULT="3/hour")
    reader = issue_key(app, name="reader", scopes=frozenset({"items:read"}))
    client = app.test_client()
    answers = [
        client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
        for _ in range(4)
    ]
    assert [r.status_code for r in answers] == [403, 403, 403, 429]
    assert refused(answers[-1], 429, "rate_limited")


def test_log_flooding_repeated_refusals_are_logged_once(make_app, issue_key, logs):
    app = make_app()
    reader = issue_key(app, name="reader", scopes=frozenset({"items:read"}))
    client = app.test_client()
    for _ in range(20):
        client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
    warnings = [line for line in logs.lines if "authentication failed" in line]
    assert len(warnings) == 1
    assert "insufficient_scope" in warnings[0]


def protected_route_with_its_own_limit(app, limit):
    """Add GET /reports, limited to ``limit`` per key on top of the key's own limit."""

    @require_api_key
    @rate_limit(limit)
    def reports():
        return {"key": g.api_key.name}

    app.add_url_rule("/reports", view_func=reports)


def test_a_route_can_have_its_own_tighter_limit_per_key(make_app, key, issue_key):
    app = make_app(RATELIMIT_DEFAULT="100/hour")
    protected_route_with_its_own_limit(app, "2/hour")
    other = issue_key(app, name="other")
    client = app.test_client()
    answers = [client.get("/reports", headers={API_KEY_HEADER: key}) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Limit"] for r in answers] == ["2", "2", "2"]
    # Counted per key and route: another key, or another route, is not held back.
    assert client.get("/reports", headers={API_KEY_HEADER: other}).status_code == 200
    assert whoami(client, key).headers["X-RateLimit-Remaining"] == "96"


def test_a_route_limit_with_a_typo_fails_at_import_time():
    with pytest.raises(ValueError):
        rate_limit("10 per fortnight")


def test_brute_force_from_one_ipv6_connection_is_counted_per_64(make_app, key):
    client = make_app(AUTH_FAILURE_LIMIT="3/hour").test_client()
    addresses = [{"REMOTE_ADDR": f"2001:db8:1:2::{n:x}"} for n in range(1, 6)]
    statuses = [whoami(client, keys.generate_key(), address).status_code for address in addresses]
    assert statuses == [401, 401, 401, 429, 429]
    # Another /64 is another client.
    assert whoami(client, key, {"REMOTE_ADDR": "2001:db8:1:3::1"}).status_code == 200


def test_only_a_valid_ip_address_names_a_failure_counter():
    assert client_network("203.0.113.7") == "203.0.113.7"
    assert client_network("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    for junk in ("", None, "proxy.internal", "1.2.3.4\nforged", '"unbalanced'):
        assert client_network(junk) == "unknown"


def test_a_key_whose_limit_changes_is_counted_by_its_new_limit():
    limiter = RateLimiter("memory://", "100/hour", "5/minute")
    record = keys.KeyRecord("partner", "0123456789ab", rate_limit="2/hour")

    def admit(record):
        standing = limiter.admit("192.0.2.1", record, "whoami", ())
        return standing.counter.limit.amount, standing.window.count

    assert admit(record) == (2, 1)
    assert admit(dataclasses.replace(record, rate_limit="5/hour")) == (5, 1)  # a reload
    assert admit(dataclasses.replace(record, rate_limit=None)) == (100, 1)


def counter(name, amount, per=RateLimitItemPerHour):
    return Counter(name, per(amount))


def test_memory_storage_forgets_ended_windows():
    storage = MemoryStorage()
    second = counter("a", 10, RateLimitItemPerSecond)
    assert [storage.hit((), [second])[0].count for _ in range(2)] == [1, 2]
    assert storage.hit([second], ())[0].ends == pytest.approx(time.time() + 1, abs=0.1)
    storage.hit((), [counter("b", 10)])
    time.sleep(1.05)
    assert storage.hit([second], ())[0].count == 0
    # The next hit after the sweep time drops every ended window: memory stays bounded.
    storage._next_sweep = 0
    assert storage.hit((), [counter("c", 10)])[0].count == 1
    assert set(storage._windows) == {"b", "c"}


def test_memory_storage_stops_at_a_full_check_and_counts_nothing():
    storage = MemoryStorage()
    failures, key = counter("failures", 3), counter("key", 10)
    storage.hit((), [failures, failures])
    assert [window.count for window in storage.hit([failures], [key])] == [2, 1]
    storage.hit((), [failures])
    # Full: the check stops there, and the key's counter is not touched.
    assert [window.count for window in storage.hit([failures], [key])] == [3]
    assert storage.hit([key], ())[0].count == 1


# ---- a key's own limit in the database registry ------------------------------------------


@pytest.mark.parametrize("limit", ["lots", "10 per fortnight", "100/minute; often"])
def test_a_bad_key_limit_is_refused_by_the_registry(limit):
    with create_app({"APP_ENV": "testing"}).app_context():
        assert registry.check_rate_limit(None) is None
        assert registry.check_rate_limit("100/hour;10/minute") == "100/hour;10/minute"
        with pytest.raises(registry.RegistryError, match="not a rate limit"):
            registry.check_rate_limit(limit)
        with pytest.raises(registry.RegistryError, match="not a rate limit"):
            registry.create("partner", rate_limit=limit, now=datetime.now(UTC))
        assert registry.all_keys(now=datetime.now(UTC)) == []


def test_rotation_keeps_the_key_limit_and_its_rate_limit_counter():
    now = datetime.now(UTC)
    with create_app({"APP_ENV": "testing"}).app_context():
        _, first = registry.create("partner", rate_limit="10/second", now=now)
        registry.rotate("partner", grace=timedelta(days=1), now=now)
        _, successor, retired = registry.rotate("partner", grace=timedelta(days=1), now=now)
        rows = [row for row in registry.all_keys(now=now) if row.name == "partner"]
        assert [row.rate_limit for row in rows] == ["10/second"] * 3
        # One count for the key and every predecessor still in its grace period: the first's.
        assert {row.counter for row in rows} == {first.fingerprint}
        assert registry.record(successor).counter == registry.record(retired).counter
        assert registry.record(successor).rate_limit == "10/second"
        # A key of its own has a counter of its own.
        _, other = registry.create("other", now=now)
        assert other.counter == other.fingerprint != first.fingerprint


def test_a_rotated_key_and_its_successor_share_one_limit(make_app, registry_key):
    """Rotation must not hand out a second full limit for the grace period."""
    old_key, _ = registry_key("partner", rate_limit="3/hour")
    app = make_app()
    client = app.test_client()
    assert [whoami(client, old_key).status_code for _ in range(2)] == [200, 200]
    with create_app({"APP_ENV": "testing"}).app_context():
        new_key, _, _ = registry.rotate("partner", grace=timedelta(days=1), now=datetime.now(UTC))
    app.extensions["api_keys"].refresh()
    answer = whoami(client, new_key)
    assert answer.status_code == 200
    assert answer.json["name"] == "partner"
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    assert refused(whoami(client, new_key), 429, "rate_limited")
    assert refused(whoami(client, old_key), 429, "rate_limited")


# ---- RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-11) ------------

# RFC 9651's grammar, as the draft uses it: each field is a List of Items whose value is a
# String, with Parameters.
SF_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*"'
SF_BARE_ITEM = (
    r"(?:-?[0-9]{1,12}\.[0-9]{1,3}|-?[0-9]{1,15}|"
    + SF_STRING
    + r"|[A-Za-z*][!#$%&'*+.^_`|~:/0-9A-Za-z-]*|:[A-Za-z0-9+/=]*:|\?[01])"
)
SF_PARAMETER = re.compile(rf";[ ]*([a-z*][a-z0-9_.*-]*)(?:=({SF_BARE_ITEM}))?")
SF_ITEM = re.compile(rf"({SF_STRING})((?:{SF_PARAMETER.pattern})*)")
SF_LIST = re.compile(rf"{SF_ITEM.pattern}(?:[ \t]*,[ \t]*{SF_ITEM.pattern})*")
SF_INTEGER = re.compile(r"-?[0-9]{1,15}")


def structured_list(value):
    """A RateLimit or RateLimit-Policy value as [(name, {parameter: value})]; a failed test
    unless it is a List of String Items, as the draft requires."""
    assert SF_LIST.fullmatch(value), f"not a Structured Field List of Strings: {value!r}"
    items = []
    for item in SF_ITEM.finditer(value):
        parameters = SF_PARAMETER.findall(item.group(2))
        assert len({key for key, _ in parameters}) == len(parameters), value
        name = re.sub(r"\\(.)", r"\1", item.group(1)[1:-1])
        items.append((name, dict(parameters)))
    return items


def integer(text, minimum=0):
    assert SF_INTEGER.fullmatch(text) and int(text) >= minimum, text
    return int(text)


def draft_headers(response):
    """The draft's two headers, checked against its grammar and against X-RateLimit-*:
    returns {policy: (q, w)} and the one reported, (name, r, t)."""
    policies = {}
    for name, parameters in structured_list(response.headers["RateLimit-Policy"]):
        assert set(parameters) == {"q", "w"}, parameters
        assert name not in policies, f"two policies named {name!r}"
        policies[name] = (integer(parameters["q"]), integer(parameters["w"], minimum=1))
    [(name, parameters)] = structured_list(response.headers["RateLimit"])
    assert set(parameters) == {"r", "t"}, parameters
    remaining, seconds_left = integer(parameters["r"]), integer(parameters["t"])
    # The same limit as the X-RateLimit-* headers, its reset in seconds, not a timestamp.
    assert name in policies, (name, policies)
    assert str(policies[name][0]) == response.headers["X-RateLimit-Limit"]
    assert str(remaining) == response.headers["X-RateLimit-Remaining"]
    reset = int(response.headers["X-RateLimit-Reset"])
    assert abs(seconds_left - (reset - time.time())) <= 1.5, (seconds_left, reset)
    assert seconds_left <= policies[name][1]
    return policies, (name, remaining, seconds_left)


def test_draft_headers_have_the_drafts_syntax_and_agree_with_x_ratelimit(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="5/hour").test_client()
    answers = [whoami(client, key) for _ in range(3)]
    for sent, response in enumerate(answers, start=1):
        assert response.headers["RateLimit-Policy"] == '"key";q=5;w=3600'
        assert re.fullmatch(rf'"key";r={5 - sent};t=(3599|3600)', response.headers["RateLimit"])
        policies, reported = draft_headers(response)
        assert policies == {"key": (5, 3600)} and reported[:2] == ("key", 5 - sent)


def test_a_429_carries_the_draft_headers_with_retry_after_no_earlier(make_app, key):
    client = make_app(RATELIMIT_DEFAULT="2/hour").test_client()
    refused = [whoami(client, key) for _ in range(3)][-1]
    assert refused.status_code == 429
    policies, (name, remaining, seconds_left) = draft_headers(refused)
    assert (name, remaining) == ("key", 0) and policies == {"key": (2, 3600)}
    # The draft: Retry-After must not point earlier than the end of the effective window.
    assert int(refused.headers["Retry-After"]) >= seconds_left


def test_every_limit_is_a_policy_with_a_name_of_its_own(make_app, registry_key):
    """Two limits of the key, its owner's and the route's: RateLimit-Policy lists all four,
    each named uniquely and predictably; RateLimit reports the closest, the route's."""
    partner, _ = registry_key("partner", owner="acme", rate_limit="100/2 hours;10/minute")
    with create_app({"APP_ENV": "testing"}).app_context():
        registry.set_owner_limit("acme", "1000/day")
    app = make_app()
    protected_route_with_its_own_limit(app, "3/hour")
    response = app.test_client().get("/reports", headers={API_KEY_HEADER: partner})
    assert response.status_code == 200
    assert response.headers["RateLimit-Policy"] == (
        '"key-100-per-2-hours";q=100;w=7200, "key-10-per-minute";q=10;w=60, '
        '"owner";q=1000;w=86400, "route";q=3;w=3600'
    )
    policies, reported = draft_headers(response)
    assert len(policies) == 4 and reported[:2] == ("route", 2)


def test_the_failure_cap_reports_its_own_policy_on_its_429(make_app, key):
    client = make_app(AUTH_FAILURE_LIMIT="2/hour").test_client()
    guesses = [whoami(client, keys.generate_key(), ATTACKER) for _ in range(3)]
    assert [r.status_code for r in guesses] == [401, 401, 429]
    assert "RateLimit" not in guesses[0].headers  # a 401 is no limited answer
    policies, reported = draft_headers(guesses[-1])
    assert policies == {"auth-failures": (2, 3600)} and reported[:2] == ("auth-failures", 0)
    cut_off = whoami(client, key, ATTACKER)  # a right key, from a client cut off
    assert draft_headers(cut_off)[1][:2] == ("auth-failures", 0)
