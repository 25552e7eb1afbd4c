"""Rate limits (ratelimit.py): each key's own limit, a cap on failed authentications per
client IP, the standard headers, and fail-closed behaviour when the storage is down.

These use memory:// storage; the template's own tests run the same against a real Redis
shared by several gunicorn workers.
"""

import dataclasses
import socket
import time

import pytest

from {{ cookiecutter.package_name }} import ConfigError, create_app, keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.ratelimit import (
    HEADERS_ENVIRON_KEY,
    ProcessCounters,
    RateLimiter,
    _Lease,
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
    assert limited.json == {"error": "rate_limited", "message": limited.json["message"]}
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
    counters = list(app.extensions["rate_limiter"]._counters._windows)
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
    for path in ("/health", "/openapi.json"):
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


def admit_headers(app, limiter, record, ip="192.0.2.1"):
    """What RateLimiter.admit leaves for the response of a request from ``ip``."""
    with app.test_request_context(environ_base={"REMOTE_ADDR": ip}) as context:
        limiter.admit(context.request, record)
        return dict(context.request.environ[HEADERS_ENVIRON_KEY])


def test_counter_names_are_kept_for_a_bounded_number_of_clients(make_app):
    app = make_app()
    limiter = RateLimiter("memory://", "100/hour", "5/minute")
    limiter.NAMES_KEPT = 3
    record = keys.KeyRecord("partner", "0123456789ab")
    for client in range(10):
        assert admit_headers(app, limiter, record, f"192.0.2.{client}")["X-RateLimit-Remaining"]
        assert len(limiter._names) <= 3
    # Names made again count on the same counter.
    assert admit_headers(app, limiter, record, "192.0.2.0")["X-RateLimit-Remaining"] == "89"


def test_a_key_whose_limit_changes_is_counted_by_its_new_limit(make_app):
    app = make_app()
    limiter = RateLimiter("memory://", "100/hour", "5/minute")
    record = keys.KeyRecord("partner", "0123456789ab", rate_limit="2/hour")
    assert admit_headers(app, limiter, record)["X-RateLimit-Limit"] == "2"
    changed = dataclasses.replace(record, rate_limit="5/hour")  # as a registry reload does
    assert admit_headers(app, limiter, changed)["X-RateLimit-Limit"] == "5"
    unset = admit_headers(app, limiter, dataclasses.replace(record, rate_limit=None))
    assert (unset["X-RateLimit-Limit"], unset["X-RateLimit-Remaining"]) == ("100", "99")


def test_memory_counters_forget_ended_windows():
    counters = ProcessCounters()
    assert [counters.hit((), [("a", 0.05, 10)]), counters.hit((), [("a", 0.05, 10)])] == [
        [(1, pytest.approx(time.time() + 0.05, abs=0.02))],
        [(2, pytest.approx(time.time() + 0.05, abs=0.02))],
    ]
    counters.hit((), [("b", 60, 10)])
    time.sleep(0.06)
    assert counters.hit([("a", 1)], ())[0][0] == 0
    # The next hit after the sweep time drops every ended window: memory stays bounded.
    counters._next_sweep = 0
    assert counters.hit((), [("c", 60, 10)])[0][0] == 1
    assert set(counters._windows) == {"b", "c"}


def test_memory_counters_stop_at_a_full_check_and_count_nothing():
    counters = ProcessCounters()
    counters.hit((), [("failures", 60, 3), ("failures", 60, 3)])
    assert [window[0] for window in counters.hit([("failures", 3)], [("key", 60, 10)])] == [2, 1]
    counters.hit((), [("failures", 60, 3)])
    # Full: the check stops there, and the key's counter is not touched.
    assert [window[0] for window in counters.hit([("failures", 3)], [("key", 60, 10)])] == [3]
    assert counters.hit([("key", 10)], ())[0][0] == 1


def test_a_lease_is_sized_by_what_its_client_spent():
    """Redis leases: double while spent within the period, else what was spent, else one."""
    counted = [(40, 1000.0 + 3600)]  # the count after the lease was taken, and its window's end
    lease = _Lease(1000.0, 8, [(0, 1000.0 + 60)], counted, seconds=1.0, over=False)
    assert lease.ends == 1001.0  # its period ends before the window does
    assert [lease.spend()[1][0] for _ in range(3)] == [34, 35, 36]  # hit 33 took it
    assert lease.wanted(1000.5, 1.0, 64) == 4  # 4 of 8 spent when its period ended
    for _ in range(4):
        lease.spend()
    assert lease.left == 0
    assert lease.wanted(1000.5, 1.0, 64) == 16  # all spent within the period: twice as many
    assert lease.wanted(1000.5, 1.0, 10) == 10  # never more than the most
    assert lease.wanted(1001.5, 1.0, 64) == 8  # spent, but over more than the period
    assert lease.wanted(1002.0, 1.0, 64) == 1  # the client paused: start again from one
    # A refusal (count 11 of a 10-hit limit) is repeated as it was while its lease lasts.
    refusal = _Lease(1000.0, 1, [], [(11, 1000.0 + 3600)], seconds=1.0, over=True)
    assert refusal.spend() == refusal.spend() == [(11, 1000.0 + 3600)]


def test_a_lease_hands_back_what_it_did_not_serve_while_its_window_clearly_lasts():
    hour, minute = (40, 1000.0 + 3600), (40, 1000.0 + 1.5)  # counts after it, window ends
    lease = _Lease(1000.0, 8, [], [hour, minute], seconds=1.0, over=False)
    lease.spend()  # 2 of 8 served
    assert lease.hand_back(1000.2) == [6, 6]
    assert lease.left == 0 and lease.hand_back(1000.2) == [0, 0]  # handed back once
    lease = _Lease(1000.0, 8, [], [hour, minute], seconds=1.0, over=False)
    # Less than a second before the minute's window ends: a new window may have begun
    # by the time Redis sees it, and must not be counted down.
    assert lease.hand_back(1000.6) == [7, 0]
