"""Rate limits: each key's own limit, and a cap on failed authentications per client IP.

Limits use the `limits` library's notation (``60/minute``, as in Flask-Limiter)
and its storage URIs. The key check calls the app's limiter,
``app.extensions["rate_limiter"]``: :meth:`RateLimiter.admit` once it knows the
key and :meth:`RateLimiter.refuse_if_blocked` when it refuses one, so routes
without a key pay nothing. ``memory://`` counts in each process
(ProcessCounters), one atomic call per request; ``redis://`` counts in a Redis
shared by every worker and host (RedisCounters), in a Lua script run
atomically, and a busy client's requests are counted there a lease at a time,
so that most of them need no round trip. Counters are named by the key's
fingerprint, never by the key itself (credential leak). The headers that
report a key's limit are appended as the response is sent
(RateLimitedResponse), the cheapest place Flask offers.

Windows are fixed: a counter's window starts with its first hit and lasts the
limit's period, as in the `limits` library's fixed-window strategy.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from flask import Flask, Request, Response
from limits import parse_many
from limits.storage import storage_from_string

from .errors import APIError
from .keys import KeyRecord

log = logging.getLogger(__name__)

# A Redis that does not answer must not hold requests for long.
REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
# How long a client is told to wait while the storage is unreachable.
STORAGE_RETRY_AFTER = "5"
# Where RateLimiter.admit leaves a keyed request's rate-limit headers: the WSGI environ.
HEADERS_ENVIRON_KEY = f"{__name__}.headers"


class RateLimited(APIError):
    status, code = 429, "rate_limited"
    message = "Too many requests; retry after the number of seconds in Retry-After."


class RateLimitUnavailable(APIError):
    status, code = 503, "rate_limit_unavailable"
    message = "Rate limiting is unavailable, so the request was not served; retry shortly."


class Limit(NamedTuple):
    """At most ``amount`` requests per window of ``seconds``; ``label`` names its counters."""

    amount: int
    seconds: int
    label: str


@functools.lru_cache(maxsize=256)
def parse_limits(text: str) -> tuple[Limit, ...]:
    """``"100/minute; 1000/day"`` -> limits; a ValueError for anything else."""
    return tuple(
        Limit(
            item.amount, item.get_expiry(), f"{item.amount}/{item.multiples}{item.GRANULARITY.name}"
        )
        for item in parse_many(text)
    )


# A counter to read: its name, and the amount that makes it full.
Check = tuple[str, int]
# A counter to count a hit on: its name, its period in seconds, and its limit's amount.
Count = tuple[str, int, int]
# What a counter read: (count, end of its window in epoch seconds).
Window = tuple[int, float]
# A key's limits, a client's failure counters to read, and the key's counters to count.
Names = tuple[tuple[Limit, ...], tuple[Check, ...], tuple[Count, ...]]


@functools.lru_cache(maxsize=4096)
def _failure_counters(
    prefix: str, ip: str, limits: tuple[Limit, ...]
) -> tuple[tuple[Check, ...], tuple[Count, ...]]:
    """A client's failure counters, to read (is it cut off?) and to count a failure on."""
    checks = tuple((f"{prefix}{ip}:{limit.label}", limit.amount) for limit in limits)
    counts = tuple(
        (name, limit.seconds, amount) for (name, amount), limit in zip(checks, limits, strict=True)
    )
    return checks, counts


class ProcessCounters:
    """Fixed-window counters in this process's memory, for ``memory://``.

    One lock and a dict: the `limits` library's memory storage runs an expiry
    thread that wakes every 10 ms under load and walks every counter, slowing
    every request of the process, open routes too (measured in the template's
    benchmarks). Here a window that has ended is reset when next touched, and
    ended windows are swept once a minute, so memory stays bounded by the active
    clients.
    """

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.time() + self.SWEEP_EVERY

    def hit(self, checks: Sequence[Check], counts: Sequence[Count]) -> list[Window]:
        """Read the checks, stopping at the first one that is full; if none is, count one
        hit on each of the counts. Returns the windows read, in that order.
        """
        now = time.time()
        stored = self._windows
        windows = []
        self._lock.acquire()  # rather than `with`: half the cost, on every keyed request
        try:
            for counter, amount in checks:
                window = stored.get(counter)
                if window is None or window[1] <= now:  # never hit, or its window ended
                    window = (0, now)
                windows.append(window)
                if window[0] >= amount:
                    return windows
            for counter, seconds, _ in counts:
                window = stored.get(counter)
                if window is None or window[1] <= now:
                    window = (1, now + seconds)
                else:
                    window = (window[0] + 1, window[1])
                stored[counter] = window
                windows.append(window)
            if now >= self._next_sweep:
                self._sweep(now)
        finally:
            self._lock.release()
        return windows

    # A keyed request: in one process, counting each hit exactly costs no more than a lease.
    take = hit

    def _sweep(self, now: float) -> None:
        self._windows = {name: window for name, window in self._windows.items() if window[1] > now}
        self._next_sweep = now + self.SWEEP_EVERY


class _Lease:
    """Hits one worker counted in Redis ahead of time for one client and key, to serve them
    without a round trip; or, once the key's limit is spent, its refusal, to repeat it."""

    __slots__ = ("before", "checked", "ends", "granted", "left", "over", "taken")

    def __init__(
        self,
        taken: float,
        granted: int,
        checked: list[Window],
        counted: list[Window],
        seconds: float,
        *,
        over: bool,
    ) -> None:
        self.taken = taken
        self.granted = granted
        self.left = granted - 1  # the request that took the lease spends one
        self.over = over  # a count is over its limit: it stays so until its window ends
        self.checked = checked  # the client's failure counters, as read when it was taken
        self.before = [(count - granted, ends) for count, ends in counted]  # counts before it
        self.ends = min([taken + seconds] + [ends for _, ends in counted])

    def spend(self) -> list[Window]:
        if self.left:
            self.left -= 1
        spent = self.granted - self.left
        return self.checked + [(count + spent, ends) for count, ends in self.before]

    def wanted(self, now: float, seconds: float, most: int) -> int:
        """The next lease's size: about one lease period of this client's requests."""
        if now - self.taken >= 2 * seconds:
            return 1  # the client paused: start again from one
        spent = self.granted - self.left
        if not self.left and now - self.taken < seconds:
            return min(most, 2 * spent)  # spent within its period: the client is faster
        return max(1, spent)

    def hand_back(self, now: float) -> list[int]:
        """Give up the hits left: how many each counter may take back. Only a window that
        has clearly not ended takes them back (a second to spare): after the end, a new
        window would be counted down, and its limit overshot.
        """
        left, self.left = self.left, 0
        return [left if now + 1 < ends else 0 for _, ends in self.before]


class RedisCounters:
    """The same counters in Redis, shared by every worker and host.

    Each call is a Lua script, run atomically. A round trip costs a worker about
    as much CPU as a whole request (measured in the template's benchmarks), so a
    keyed request (:meth:`take`) takes a lease: the script counts up to
    ``MAX_LEASE`` hits at once for that client and key, and the worker serves the
    client's next requests from the lease, without Redis, for up to
    ``LEASE_SECONDS``. A lease starts at one hit and doubles each time the client
    spends it within the period, and never holds more than a sixteenth of what
    the tightest limit has left (one hit once fewer than 32 are left), so:

    - every hit is counted in Redis before it is served: all workers together
      never admit more than a limit;
    - hits a lease did not serve are handed back, uncounted, with the client's
      next lease or when old leases are swept, while their window lasts;
    - a client refused for its key's limit is refused again from its lease,
      without Redis, until the lease ends (a count never goes down within its
      window but by hits handed back), so a flood over the limit costs Redis one
      call a second per worker;
    - the client's failure counters are read with each lease, so a client cut off
      for failed authentications, or a Redis that went away, is noticed within
      ``LEASE_SECONDS``. A key guessed right is never served from a lease: it has
      none yet, so its first request reads the failure counters.

    One thread at a time takes a client's next lease; others meanwhile count one
    hit each, so that no lease is taken only to be replaced. Counter names share
    one hash tag, so a Redis Cluster keeps them in one slot, where a script may
    touch them all.
    """

    LEASE_SECONDS = 1.0
    MAX_LEASE = 64
    # Leases older than 2 * LEASE_SECONDS are dropped this often, so the worker's memory
    # holds the clients of the last few seconds only, however many addresses come.
    SWEEP_EVERY = 5.0

    # KEYS: the checked counters, then the counted ones. ARGV[1]: how many are checked;
    # ARGV[2]: the hits wanted; then each checked counter's amount; then, for each counted
    # counter, its amount, its period in seconds and the hits handed back to it first.
    # Returns the hits counted (none when a check is full, or none wanted), then the count
    # and milliseconds left of each counter looked at.
    SCRIPT = """
local checks = tonumber(ARGV[1])
local function arg(i, field)  -- field 0, 1, 2 of counted counter KEYS[i]
  return tonumber(ARGV[3 * i - 2 * checks + field])
end
for i = checks + 1, #KEYS do
  local back = arg(i, 2)
  if back > 0 and redis.call("EXISTS", KEYS[i]) == 1 then
    redis.call("DECRBY", KEYS[i], back)
  end
end
if ARGV[2] == "0" then  -- only handing back
  return {0}
end
local reply = {0}
for i = 1, checks do
  local count = tonumber(redis.call("GET", KEYS[i]) or "0")
  table.insert(reply, count)
  table.insert(reply, redis.call("PTTL", KEYS[i]))
  if count >= tonumber(ARGV[i + 2]) then
    return reply
  end
end
local grant = tonumber(ARGV[2])
if grant > 1 then
  for i = checks + 1, #KEYS do
    local left = arg(i, 0) - tonumber(redis.call("GET", KEYS[i]) or "0")
    grant = math.min(grant, math.floor(left / 16))
  end
  grant = math.max(grant, 1)
end
reply[1] = grant
for i = checks + 1, #KEYS do
  local count = redis.call("INCRBY", KEYS[i], grant)
  local ttl = redis.call("PTTL", KEYS[i])
  if ttl < 0 then  -- a new window (or a counter that lost its expiry): it starts now
    redis.call("EXPIRE", KEYS[i], arg(i, 1))
    ttl = arg(i, 1) * 1000
  end
  table.insert(reply, count)
  table.insert(reply, ttl)
end
return reply
"""

    def __init__(self, uri: str) -> None:
        storage = storage_from_string(uri, **REDIS_OPTIONS)
        self._errors = storage.base_exceptions
        self._script = storage.get_connection().register_script(self.SCRIPT)
        self._down = False  # the last call failed: logged once, until one succeeds
        self._leases: dict[tuple[tuple[Check, ...], tuple[Count, ...]], _Lease] = {}
        self._renewing: set[tuple[tuple[Check, ...], tuple[Count, ...]]] = set()
        self._lock = threading.Lock()
        self._next_sweep = time.time() + self.SWEEP_EVERY

    def hit(self, checks: Sequence[Check], counts: Sequence[Count]) -> list[Window]:
        """As :meth:`ProcessCounters.hit`: one round trip, each hit counted as it comes."""
        return self._run(checks, counts, 1)[1]

    def take(self, checks: tuple[Check, ...], counts: tuple[Count, ...]) -> list[Window]:
        """As :meth:`hit`, for a request with a valid key: from the client's lease while
        it lasts, else with a new one. A lease's windows count its hits one by one.
        """
        client = (checks, counts)
        now = time.time()
        with self._lock:
            lease = self._leases.get(client)
            if lease is not None and (lease.left or lease.over) and now < lease.ends:
                return lease.spend()
            renew = client not in self._renewing
            if not renew or lease is None:  # a first lease, or another thread takes the next
                wanted, back = 1, None
            else:
                wanted = lease.wanted(now, self.LEASE_SECONDS, self.MAX_LEASE)
                back = lease.hand_back(now)
            if renew:
                self._renewing.add(client)
        try:
            granted, windows = self._run(checks, counts, wanted, back)
        finally:
            if renew:
                with self._lock:
                    self._renewing.discard(client)
        checked = len(checks)
        counted = windows[checked:]
        if renew:
            with self._lock:
                if not granted:  # a failure counter is full: the client is cut off
                    self._leases.pop(client, None)
                    return windows
                over = any(
                    count > amount
                    for (count, _), (_, _, amount) in zip(counted, counts, strict=True)
                )
                lease = _Lease(
                    now, granted, windows[:checked], counted, self.LEASE_SECONDS, over=over
                )
                self._leases[client] = lease
                swept = self._sweep(now) if now >= self._next_sweep else []
            if swept:
                self._hand_back(swept)
        # This request is the first of the hits counted.
        return windows[:checked] + [(count - granted + 1, ends) for count, ends in counted]

    def _run(
        self,
        checks: Sequence[Check],
        counts: Sequence[Count],
        wanted: int,
        back: Sequence[int] | None = None,
    ) -> tuple[int, list[Window]]:
        sent = time.time()  # windows end no later than this plus what Redis says is left
        try:
            granted, *reply = self._call(checks, counts, wanted, back)
        except self._errors as error:
            with self._lock:  # leases taken before the outage are dropped
                self._leases.clear()
            if not self._down:
                log.error(
                    "rate-limit storage unavailable, refusing protected requests: %s: %s",
                    type(error).__name__,
                    error,
                )
            self._down = True
            raise RateLimitUnavailable(headers={"Retry-After": STORAGE_RETRY_AFTER}) from None
        if self._down:
            log.warning("rate-limit storage is back")
            self._down = False
        return int(granted), [
            (int(count), sent + max(int(left), 0) / 1000)
            for count, left in zip(reply[::2], reply[1::2], strict=True)
        ]

    def _sweep(self, now: float) -> list[tuple[tuple[Count, ...], list[int]]]:
        """Drop the leases that no longer size the next ones; return what they hand back."""
        idle = 2 * self.LEASE_SECONDS
        kept, swept = {}, []
        for client, lease in self._leases.items():
            if now - lease.taken < idle:
                kept[client] = lease
            elif lease.left:
                swept.append((client[1], lease.hand_back(now)))
        self._leases = kept
        self._next_sweep = now + self.SWEEP_EVERY
        return swept

    def _hand_back(self, swept: Sequence[tuple[tuple[Count, ...], list[int]]]) -> None:
        """Hand back what swept leases did not serve, in one call that counts nothing."""
        counts = [count for counted, _ in swept for count in counted]
        back = [returned for _, handed in swept for returned in handed]
        try:
            self._call((), counts, 0, back)
        except self._errors as error:  # those hits stay counted, as if served
            log.debug("rate-limit storage: hits not handed back: %s", type(error).__name__)

    def _call(
        self,
        checks: Sequence[Check],
        counts: Sequence[Count],
        wanted: int,
        back: Sequence[int] | None,
    ) -> list[int]:
        arguments = [len(checks), wanted, *(amount for _, amount in checks)]
        for (_, seconds, amount), returned in zip(counts, back or [0] * len(counts), strict=True):
            arguments += (amount, seconds, returned)
        names = [name for name, _ in checks] + [name for name, _, _ in counts]
        return self._script(keys=names, args=arguments)


class RateLimiter:
    """Each key's limit and the failed-authentication cap, in the configured storage.

    Fails closed: when Redis cannot be reached, RedisCounters raises
    RateLimitUnavailable, so protected routes answer 503 rather than run without
    limits, and knocking over Redis does not lift them (an attacker's shortcut);
    /health and the public routes still answer.
    """

    # Counter names are kept for this many pairs of client and key at most; past that they
    # are all made again, so memory stays bounded however many addresses come.
    NAMES_KEPT = 4096

    def __init__(self, storage_uri: str, default_limit: str, failure_limit: str) -> None:
        if storage_uri.startswith("memory"):
            self._counters: ProcessCounters | RedisCounters = ProcessCounters()
        else:
            self._counters = RedisCounters(storage_uri)
        self._default = default_limit  # the limits of a key with none of its own
        self._failures = parse_limits(failure_limit)
        # One hash tag for every counter (see RedisCounters).
        namespace = "{" + __name__.partition(".")[0] + "}"
        self._keys = namespace + ":key:"
        self._failed = namespace + ":auth-failures:"
        self._names: dict[tuple[str, str, str | None], Names] = {}

    def admit(self, request: Request, record: KeyRecord) -> None:
        """Count a request made with a valid key, or refuse it: its client is cut off
        for guessing, or the key's limit is spent. The rate-limit headers are left in
        the WSGI environ, for RateLimitedResponse.
        """
        ip = request.remote_addr or "-"
        client = (ip, record.fingerprint, record.rate_limit)
        names = self._names.get(client)
        if names is None:
            names = self._name_counters(client, record)
        limits, checks, counts = names
        windows = self._counters.take(checks, counts)
        first = len(checks)
        if len(windows) <= first:  # the reads stopped at a full failure counter
            self._refuse_if_cut_off(windows)
        # The limit closest to running out is the one reported, and refuses once spent.
        limit, window = limits[0], windows[first]
        if len(limits) > 1:
            for other, other_window in zip(limits[1:], windows[first + 1 :], strict=True):
                if other.amount - other_window[0] < limit.amount - window[0]:
                    limit, window = other, other_window
        if window[0] > limit.amount:
            raise _refusal(limit, window)
        request.environ[HEADERS_ENVIRON_KEY] = _headers(limit, window)

    def _name_counters(self, client: tuple[str, str, str | None], record: KeyRecord) -> Names:
        """The key's limits, the client's failure counters to read and the key's counters
        to count: made once per ``(ip, fingerprint, limits)``, as they are the same on
        every request."""
        if len(self._names) >= self.NAMES_KEPT:
            self._names.clear()
        limits = parse_limits(record.rate_limit or self._default)
        counts = tuple(
            (f"{self._keys}{record.fingerprint}:{limit.label}", limit.seconds, limit.amount)
            for limit in limits
        )
        checks, _ = _failure_counters(self._failed, client[0], self._failures)
        names = self._names[client] = limits, checks, counts
        return names

    def refuse_if_blocked(self, ip: str, *, guess: bool) -> None:
        """Refuse a client cut off for guessing, counting this request first if it is a
        ``guess`` (a failed authentication). A refused client gets 429 whatever it sends.
        """
        checks, counts = _failure_counters(self._failed, ip, self._failures)
        if guess:
            for limit, window in zip(self._failures, self._counters.hit((), counts), strict=True):
                if window[0] > limit.amount:
                    raise _refusal(limit, window)
        else:
            self._refuse_if_cut_off(self._counters.hit(checks, ()))

    def _refuse_if_cut_off(self, windows: Sequence[Window]) -> None:
        """Refuse if a failure counter read (the reads stop at a full one) is full."""
        for limit, window in zip(self._failures, windows, strict=False):
            if window[0] >= limit.amount:
                raise _refusal(limit, window)


def _headers(limit: Limit, window: Window) -> list[tuple[str, str]]:
    """The rate-limit headers clients know from GitHub and Flask-Limiter."""
    amount, (count, ends) = limit.amount, window
    return [
        ("X-RateLimit-Limit", str(amount)),
        ("X-RateLimit-Remaining", str(amount - count if count < amount else 0)),
        ("X-RateLimit-Reset", str(math.ceil(ends))),
    ]


def _refusal(limit: Limit, window: Window) -> RateLimited:
    headers = dict(_headers(limit, window))
    headers["Retry-After"] = str(max(1, math.ceil(window[1] - time.time())))
    return RateLimited(headers=headers)


class RateLimitedResponse(Response):
    """Flask's response, plus the rate-limit headers that :meth:`RateLimiter.admit` left for it.

    They are appended as the response is sent: after every after_request hook, to
    whatever the view answered, errors included. Werkzeug validates, copies and
    scans each header of a Response several times; adding these three in a hook
    cost every keyed request several percent (measured in the template's benchmarks).
    """

    def get_wsgi_response(self, environ: dict[str, Any]) -> tuple[Any, str, list[tuple[str, str]]]:
        app_iter, status, headers = super().get_wsgi_response(environ)
        extra = environ.get(HEADERS_ENVIRON_KEY)
        return app_iter, status, headers + extra if extra else headers


def init_app(app: Flask) -> None:
    """Give the app its limiter, as RATELIMIT_STORAGE_URI and the limits configure it."""
    app.response_class = RateLimitedResponse
    app.extensions["rate_limiter"] = RateLimiter(
        app.config["RATELIMIT_STORAGE_URI"],
        app.config["RATELIMIT_DEFAULT"],
        app.config["AUTH_FAILURE_LIMIT"],
    )
