"""Rate limits: each key's own limit, and a cap on failed authentications per client IP.

Built on the `limits` library (the engine under Flask-Limiter: same storages,
same ``60/minute`` notation) and called from the key check, which already
knows the key, so routes without a key pay nothing. Counters live in
RATELIMIT_STORAGE_URI: ``memory://`` counts in each process (ProcessCounters),
``redis://`` is shared by every worker and host. They are keyed by the key's
fingerprint, never by the key itself (credential leak).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable

from flask import Flask, after_this_request, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string

from .errors import APIError
from .keys import KeyRecord

log = logging.getLogger(__name__)

# A Redis that does not answer must not hold requests for long.
REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
# How long a client is told to wait while the storage is unreachable.
STORAGE_RETRY_AFTER = "5"


class RateLimited(APIError):
    status, code = 429, "rate_limited"
    message = "Too many requests; retry after the number of seconds in Retry-After."


class RateLimitUnavailable(APIError):
    status, code = 503, "rate_limit_unavailable"
    message = "Rate limiting is unavailable, so the request was not served; retry shortly."


@functools.lru_cache(maxsize=256)
def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """``"100/minute; 1000/day"`` -> limit items; a ValueError for anything else."""
    return tuple(parse_many(text))


class ProcessCounters:
    """Fixed-window counters in this process's memory, for ``memory://``.

    Used instead of the `limits` library's memory storage, whose expiry thread
    wakes every 10 ms under load and walks every counter, slowing every request
    of the process, open routes too (measured in the template's benchmarks).
    Here a window that has ended is reset when next touched, and ended windows
    are swept once a minute, so memory stays bounded by the active clients.
    """

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, float]] = {}  # counter -> (count, window end)
        self._lock = threading.Lock()
        self._next_sweep = time.time() + self.SWEEP_EVERY

    def incr(self, counter: str, expiry: float) -> int:
        """Count one hit; a new window starts with the first hit after the last one ended."""
        now = time.time()
        with self._lock:
            count, ends = self._windows.get(counter, (0, 0.0))
            if ends <= now:
                count, ends = 0, now + expiry
            self._windows[counter] = (count + 1, ends)
            if now >= self._next_sweep:
                self._sweep(now)
        return count + 1

    def get(self, counter: str) -> int:
        count, ends = self._windows.get(counter, (0, 0.0))
        return count if ends > time.time() else 0

    def get_expiry(self, counter: str) -> float:
        return self._windows.get(counter, (0, time.time()))[1]

    def _sweep(self, now: float) -> None:
        self._windows = {key: value for key, value in self._windows.items() if value[1] > now}
        self._next_sweep = now + self.SWEEP_EVERY


class RateLimiter:
    """Fixed-window counters in the configured storage.

    A window starts with a counter's first hit and ends when the storage expires
    it: one increment per request, read back as the count (the fixed window of
    the `limits` library, done with one storage call fewer per request).

    Fails closed: when the storage cannot be reached, protected routes answer
    503 rather than run without limits, so knocking over Redis does not lift
    them (an attacker's shortcut); /health and the public routes still answer.
    """

    def __init__(self, storage_uri: str, default_limit: str, failure_limit: str) -> None:
        if storage_uri.startswith("memory"):
            self._storage = ProcessCounters()
        else:
            self._storage = storage_from_string(storage_uri, wrap_exceptions=True, **REDIS_OPTIONS)
        self._default = parse_limits(default_limit)
        self._failures = parse_limits(failure_limit)
        self._prefix = __name__.partition(".")[0]
        self._storage_down = False

    def refuse_if_blocked(self, ip: str) -> None:
        """Refuse a client that already failed to authenticate too often (brute force)."""
        for item in self._failures:
            counter = item.key_for(self._prefix, "auth-failures", ip)
            count = self._safely(self._storage.get, counter)
            if count >= item.amount:
                raise RateLimited(headers=self._headers(item, counter, count, refused=True))

    def count_failure(self, ip: str) -> None:
        for item in self._failures:
            counter = item.key_for(self._prefix, "auth-failures", ip)
            self._safely(self._storage.incr, counter, item.get_expiry())

    def hit(self, record: KeyRecord) -> None:
        """Count one request for the key; refuse it once the key's limit is spent."""
        items = parse_limits(record.rate_limit) if record.rate_limit else self._default
        tightest = None
        for item in items:
            counter = item.key_for(self._prefix, "key", record.fingerprint)
            count = self._safely(self._storage.incr, counter, item.get_expiry())
            if count > item.amount:
                raise RateLimited(headers=self._headers(item, counter, count, refused=True))
            # Report the limit closest to running out.
            if tightest is None or item.amount - count < tightest[0].amount - tightest[2]:
                tightest = (item, counter, count)
        headers = self._headers(*tightest, refused=False)  # type: ignore[misc]

        @after_this_request
        def add_headers(response):
            response.headers.update(headers)
            return response

    def _headers(
        self, item: RateLimitItem, counter: str, count: int, *, refused: bool
    ) -> dict[str, str]:
        """The rate-limit headers clients know from GitHub and Flask-Limiter."""
        reset = self._safely(self._storage.get_expiry, counter)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(max(0, item.amount - count)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if refused:
            headers["Retry-After"] = str(max(1, math.ceil(reset - time.time())))
        return headers

    def _safely(self, operation: Callable, *args):
        try:
            result = operation(*args)
        except StorageError as error:
            if not self._storage_down:
                log.error("rate-limit storage unavailable, refusing protected requests: %s", error)
            self._storage_down = True
            raise RateLimitUnavailable(headers={"Retry-After": STORAGE_RETRY_AFTER}) from None
        if self._storage_down:
            log.warning("rate-limit storage is back")
            self._storage_down = False
        return result


def init_app(app: Flask) -> None:
    """Give the app its limiter, as RATELIMIT_STORAGE_URI and the limits configure it."""
    app.extensions["rate_limiter"] = RateLimiter(
        app.config["RATELIMIT_STORAGE_URI"],
        app.config["RATELIMIT_DEFAULT"],
        app.config["AUTH_FAILURE_LIMIT"],
    )


def rate_limited(authenticate: Callable[..., KeyRecord]) -> Callable[..., KeyRecord]:
    """Put the key check behind the limits: failed guesses per IP first, then the key's own."""

    @functools.wraps(authenticate)
    def limited(*args, **kwargs) -> KeyRecord:
        limiter: RateLimiter = current_app.extensions["rate_limiter"]
        ip = request.remote_addr or "-"
        limiter.refuse_if_blocked(ip)
        try:
            record = authenticate(*args, **kwargs)
        except APIError as error:
            if error.status == 401:
                limiter.count_failure(ip)
            raise
        g.api_key = record  # logged with the request even when its limit refuses it
        limiter.hit(record)
        return record

    return limited
