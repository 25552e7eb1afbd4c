"""Rate limits: each key's limit, its owner's, a route's own, and a cap on failed logins.

Limits use the `limits` library's notation (``60/minute; 1000/day``), storage
URIs and fixed windows: a counter's window starts with its first hit and lasts
the limit's period. Each keyed request makes one atomic call to the storage,
which reads the client's failed-authentication counters, then counts a hit on
every limit the request touches: in ``memory://`` a dict behind a lock (exact
in one process), in Redis one Lua script (exact across every worker and host).
Counters are named by a key's fingerprint, never by the key (credential leak);
a rotated key's successor counts under its predecessor's, sharing its count.
An owner's limit is counted under the owner's name, by every one of its keys.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from flask import Flask, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string

from . import security
from .errors import APIError
from .keys import KeyRecord

log = logging.getLogger(__name__)

# A Redis that does not answer must not hold requests for long.
REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
# How long a client is told to wait while the storage is unreachable.
STORAGE_RETRY_AFTER = "5"
# One hash tag for every counter, so a Redis Cluster keeps them in one slot, where a
# script may touch them all.
NAMESPACE = "{" + __name__.partition(".")[0] + "}"
# One IPv6 connection gets a whole /64: count failures per /64, or a single home
# connection would have unlimited guesses (brute force).
IPV6_CLIENT_PREFIX = 64

# The headers of a limited answer. X-RateLimit-* as GitHub and Flask-Limiter send them
# (Reset in epoch seconds), for the clients that know only those; RateLimit-Policy and
# RateLimit as draft-ietf-httpapi-ratelimit-headers-11 defines them (t in seconds).
LIMIT_HEADER = "X-RateLimit-Limit"
REMAINING_HEADER = "X-RateLimit-Remaining"
RESET_HEADER = "X-RateLimit-Reset"
POLICY_HEADER = "RateLimit-Policy"
RATELIMIT_HEADER = "RateLimit"
RETRY_AFTER_HEADER = "Retry-After"
# The headers that tell a client where it stands (cors.py lets browser scripts read them).
CLIENT_HEADERS = (
    RETRY_AFTER_HEADER,
    LIMIT_HEADER,
    REMAINING_HEADER,
    RESET_HEADER,
    POLICY_HEADER,
    RATELIMIT_HEADER,
)


class RateLimited(APIError):
    status, code = 429, "rate_limited"
    message = "Too many requests; retry after the number of seconds in Retry-After."
    # The problem type the IETF's rate-limit draft registers, which clients may know.
    type = "https://iana.org/assignments/http-problem-types#quota-exceeded"


class RateLimitUnavailable(APIError):
    status, code = 503, "rate_limit_unavailable"
    message = "Rate limiting is unavailable, so the request was not served; retry shortly."


class Counter(NamedTuple):
    """A storage counter, the limit it enforces (`limits`' own item: amount and period),
    and the name the RateLimit headers give that limit (its policy)."""

    name: str
    limit: RateLimitItem
    policy: str = ""


class Window(NamedTuple):
    """What a counter holds: its count, and when its window ends (epoch seconds)."""

    count: int
    ends: float


class MemoryStorage:
    """Fixed windows in this process's memory, for ``memory://``: a dict behind a lock.

    A window that has ended is reset when next touched; ended windows are swept
    once a minute, so memory stays bounded by the clients of the last window.
    """

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.time() + self.SWEEP_EVERY

    def hit(self, checked: Sequence[Counter], counted: Sequence[Counter]) -> list[Window]:
        """Read ``checked``, stopping at the first full one; if none is full, count a hit
        on each of ``counted``. Returns the windows looked at, in that order."""
        now = time.time()
        windows = []
        with self._lock:
            for counter in checked:
                window = self._current(counter.name, now)
                windows.append(window)
                if window.count >= counter.limit.amount:
                    return windows
            for counter in counted:
                window = self._current(counter.name, now)
                ends = window.ends if window.count else now + counter.limit.get_expiry()
                window = self._windows[counter.name] = Window(window.count + 1, ends)
                windows.append(window)
            if now >= self._next_sweep:
                self._windows = {name: w for name, w in self._windows.items() if w.ends > now}
                self._next_sweep = now + self.SWEEP_EVERY
        return windows

    def _current(self, name: str, now: float) -> Window:
        window = self._windows.get(name)
        return window if window is not None and window.ends > now else Window(0, now)


class RedisStorage:
    """The same windows in Redis, shared by every worker and host: one script, one round trip.

    Fails closed: when Redis cannot be reached, the request is refused with 503
    rather than served without limits, so knocking Redis over lifts no limit.
    """

    # KEYS: the counters to check, then the counters to count. ARGV[1]: how many are
    # checked; ARGV[1 + i]: the limit of checked counter i, or the window in seconds of
    # counted counter i. Returns {count, milliseconds left} for each counter looked at,
    # stopping after the first checked counter that is full (then nothing is counted).
    SCRIPT = """
local checked = tonumber(ARGV[1])
local reply = {}
for i, name in ipairs(KEYS) do
  local count
  if i <= checked then
    count = tonumber(redis.call("GET", name) or "0")
  else
    count = redis.call("INCR", name)
    if redis.call("PTTL", name) < 0 then  -- a new window starts with its first hit
      redis.call("EXPIRE", name, ARGV[1 + i])
    end
  end
  table.insert(reply, {count, redis.call("PTTL", name)})
  if i <= checked and count >= tonumber(ARGV[1 + i]) then
    break
  end
end
return reply
"""

    def __init__(self, uri: str) -> None:
        self._storage = storage_from_string(uri, **REDIS_OPTIONS)
        self._errors = self._storage.base_exceptions
        self._script = self._storage.get_connection().register_script(self.SCRIPT)
        self._down = False  # the last call failed: logged once, until one succeeds

    def answers(self) -> bool:
        """True when Redis answers a ping (for /ready)."""
        return self._storage.check()

    def hit(self, checked: Sequence[Counter], counted: Sequence[Counter]) -> list[Window]:
        """As :meth:`MemoryStorage.hit`, in one atomic round trip."""
        keys = [counter.name for counter in (*checked, *counted)]
        args = [len(checked)]
        args += [counter.limit.amount for counter in checked]
        args += [counter.limit.get_expiry() for counter in counted]
        sent = time.time()  # windows end no later than this plus what Redis says is left
        try:
            reply = self._script(keys=keys, args=args)
        except self._errors as error:
            if not self._down:
                log.error("rate-limit storage unavailable, refusing keyed requests: %s", error)
            self._down = True
            raise RateLimitUnavailable(headers={RETRY_AFTER_HEADER: STORAGE_RETRY_AFTER}) from None
        if self._down:
            log.warning("rate-limit storage is back")
            self._down = False
        return [Window(int(count), sent + max(int(left), 0) / 1000) for count, left in reply]


class Standing(NamedTuple):
    """Where a request stands: the counter closest to running out and its window (the
    limit the headers report, and the one that refuses), and every counter it touched."""

    counter: Counter
    window: Window
    counters: tuple[Counter, ...]


class RateLimiter:
    """Each key's limits and the failed-authentication cap, in the configured storage."""

    def __init__(self, storage_uri: str, default_limit: str, failure_limit: str) -> None:
        memory = storage_uri.startswith("memory")
        self.storage = MemoryStorage() if memory else RedisStorage(storage_uri)
        self.default_limits = parse_many(default_limit)
        self.failure_limits = parse_many(failure_limit)

    def admit(
        self,
        client: str,
        record: KeyRecord,
        route: str,
        route_limits: Sequence[RateLimitItem],
        owner_limit: str | None = None,
    ) -> Standing:
        """Count a request made with a valid key against the key's limits, its owner's (when
        the owner has one) and the route's, or raise RateLimited: the client is cut off for
        failed authentications, or a limit is spent. Returns where it stands, for the headers.
        """
        checked = self._failure_counters(client)
        key_limits = _parsed(record.rate_limit) if record.rate_limit else self.default_limits
        # An owner's limit is counted by all its keys: more keys buy no more requests.
        owner_limits = _parsed(owner_limit) if owner_limit else ()
        counted = (
            *_counters("key", key_limits, record.counter),
            *_counters("owner", owner_limits, record.owner),
            *_counters("route", route_limits, route, record.counter),
        )
        windows = self.storage.hit(checked, counted)
        if len(windows) <= len(checked):  # the reads stopped at a full failure counter
            full = checked[len(windows) - 1]
            raise _refusal(Standing(full, windows[-1], (full,)), [full])
        pairs = list(zip(counted, windows[len(checked) :], strict=True))
        # Fewest requests left; of those, the window that ends last: the honest wait.
        counter, window = min(
            pairs, key=lambda pair: (max(pair[0].limit.amount - pair[1].count, 0), -pair[1].ends)
        )
        standing = Standing(counter, window, counted)
        spent = [counter for counter, window in pairs if window.count > counter.limit.amount]
        if spent:
            raise _refusal(standing, spent)
        return standing

    def count_failure(self, client: str) -> None:
        """Count a failed authentication; raise RateLimited once the client is over the cap,
        whatever it sends from then on, a right key included (brute force)."""
        counted = self._failure_counters(client)
        for counter, window in zip(counted, self.storage.hit((), counted), strict=True):
            if window.count > counter.limit.amount:
                raise _refusal(Standing(counter, window, (counter,)), [counter])

    def _failure_counters(self, client: str) -> tuple[Counter, ...]:
        return _counters("auth-failures", self.failure_limits, client)


@functools.lru_cache(maxsize=1024)
def _parsed(limits: str) -> tuple[RateLimitItem, ...]:
    """A key's or an owner's limits, parsed once per distinct text, not once per request."""
    return tuple(parse_many(limits))


def _counters(kind: str, limits: Sequence[RateLimitItem], *names: str) -> tuple[Counter, ...]:
    """The counters of one kind of limit, named by ``names`` and policy-named for the
    headers: the kind alone for its only limit (``"key"``), else with the limit
    (``"key-60-per-minute"``, ``"key-1000-per-day"``), so that each name is unique."""

    def policy(limit: RateLimitItem) -> str:
        if len(limits) == 1:
            return kind
        unit = limit.GRANULARITY.name
        window = unit if limit.multiples == 1 else f"{limit.multiples}-{unit}s"
        return f"{kind}-{limit.amount}-per-{window}"

    return tuple(
        Counter(limit.key_for(NAMESPACE, kind, *names), limit, policy(limit)) for limit in limits
    )


def client_network(address: str | None) -> str:
    """The client as the failure cap counts it: its IPv4 address or its IPv6 /64.

    Only a valid IP address may name a counter; anything else counts as ``unknown``.
    """
    ip = security.client_ip(address)
    if ip is None:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)


def _headers(standing: Standing) -> dict[str, str]:
    """Where the client stands, in every header it may know: each limit the request counted
    against (RateLimit-Policy), and the one closest to running out (all the others)."""
    limit, window = standing.counter.limit, standing.window
    remaining = max(limit.amount - window.count, 0)
    # Policy names are letters, digits and hyphens: Structured Field strings as they are.
    policies = (
        f'"{counter.policy}";q={counter.limit.amount};w={counter.limit.get_expiry()}'
        for counter in standing.counters
    )
    seconds_left = max(math.ceil(window.ends - time.time()), 0)
    return {
        LIMIT_HEADER: str(limit.amount),
        REMAINING_HEADER: str(remaining),
        RESET_HEADER: str(math.ceil(window.ends)),
        POLICY_HEADER: ", ".join(policies),
        RATELIMIT_HEADER: f'"{standing.counter.policy}";r={remaining};t={seconds_left}',
    }


def _refusal(standing: Standing, spent: Sequence[Counter]) -> RateLimited:
    """A 429 naming the spent limits as the draft's quota-exceeded problem does."""
    headers = _headers(standing)
    headers[RETRY_AFTER_HEADER] = str(max(1, math.ceil(standing.window.ends - time.time())))
    violated = list(dict.fromkeys(counter.policy for counter in spent))
    return RateLimited(headers=headers, **{"violated-policies": violated})


def rate_limit(limits: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a protected view its own, tighter limit, counted per key and route::

        @v1.get("/reports")
        @require_api_key("reports:read")
        @rate_limit("10/minute")
        def reports(): ...

    The request counts against the key's limit (and its owner's) and this one, in the
    same call.
    """
    parsed = parse_many(limits)  # a typo fails at import time, not on the first request

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.rate_limits = parsed  # type: ignore[attr-defined]
        return view

    return decorate


def admit(record: KeyRecord) -> None:
    """Count the current request against its key's, its owner's and its route's limits
    (see auth.py). Owners' limits come from the key store: no database read here."""
    view = current_app.view_functions.get(request.endpoint or "")
    g.rate_limit = current_app.extensions["rate_limiter"].admit(
        client_network(request.remote_addr),
        record,
        request.endpoint or "",
        getattr(view, "rate_limits", ()),
        current_app.extensions["api_keys"].owner_limit(record.owner),
    )


def count_failure() -> None:
    """Count the current request's failed authentication against its client's cap."""
    current_app.extensions["rate_limiter"].count_failure(client_network(request.remote_addr))


def init_app(app: Flask) -> None:
    """Give the app its limiter, as RATELIMIT_STORAGE_URI and the limits configure it."""
    limiter = app.extensions["rate_limiter"] = RateLimiter(
        app.config["RATELIMIT_STORAGE_URI"],
        app.config["RATELIMIT_DEFAULT"],
        app.config["AUTH_FAILURE_LIMIT"],
    )
    if isinstance(limiter.storage, RedisStorage):
        app.extensions.setdefault("readiness", {})["redis"] = limiter.storage.answers
    app.after_request(_add_headers)


def _add_headers(response):
    """Tell the client where it stands against the limit closest to running out."""
    if "rate_limit" in g:
        response.headers.update(_headers(g.rate_limit))
    return response
