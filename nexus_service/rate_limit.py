"""Token buckets per client address, for what an attacker repeats: wrong passwords and
tokens, enrollment guesses.

Each address holds up to ``burst`` tokens and regains ``per_s`` a second; a request that
finds its bucket empty is answered 429 with ``Retry-After`` (seconds until one token is
back) before any work is done. The buckets live in this process's memory; the hub's
replicas also spend each failure in a bucket the store shares and lower their own to it
(``observe``; hub/state.py), so a client spreading guesses over replicas gets about one
bucket. A client's address is the TCP peer's, so behind a proxy every client shares the
proxy's bucket.
The table is bounded: past ``max_clients`` addresses the least recently seen is dropped
(it comes back with a full bucket, which bounds memory at the cost of forgetting).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from nexus_service.http import ApiError

MAX_CLIENTS = 10_000
#: wrong credentials per address unless configured (the hub's --auth-failure-limit; the edge's operator token)
WRONG_CREDENTIALS_BURST, WRONG_CREDENTIALS_PER_S = 10, 0.5


@dataclass(frozen=True)
class Rate:
    burst: int
    per_s: float


WRONG_CREDENTIALS = Rate(WRONG_CREDENTIALS_BURST, WRONG_CREDENTIALS_PER_S)


class RateLimited(ApiError):
    """429: this address spent its bucket; ``retry_after_s`` until it holds a token again."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(
            429,
            f"too many {what} from this address; retry in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class TokenBuckets:
    def __init__(
        self, what: str, rate: Rate, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate.burst < 1 or not rate.per_s > 0:
            raise ValueError("a rate limit needs a burst of at least 1 and a positive refill rate")
        self.what = what
        self.rate = rate
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)
        self._lock = threading.Lock()  # the dashboard and the API call in from worker threads too

    def _level(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.rate.burst), now))
        return min(float(self.rate.burst), tokens + (now - at) * self.rate.per_s)

    def check(self, address: str) -> None:
        """Raise :class:`RateLimited` when ``address`` has no token left (spends none)."""
        with self._lock:
            now = self.clock()
            level = self._level(address, now)
        if level < 1.0:
            raise RateLimited(self.what, max(1, math.ceil((1.0 - level) / self.rate.per_s)))

    def observe(self, address: str, level: float) -> None:
        """Lower ``address``'s bucket to ``level``, what a bucket shared with other processes
        holds (the hub's replicas share theirs through the store); never raises it."""
        with self._lock:
            now = self.clock()
            self._buckets[address] = (min(self._level(address, now), max(0.0, level)), now)
            self._buckets.move_to_end(address)

    def spend(self, address: str) -> None:
        """Take one token from ``address`` (a failure it caused, or an attempt)."""
        with self._lock:
            now = self.clock()
            self._buckets[address] = (max(0.0, self._level(address, now) - 1.0), now)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
