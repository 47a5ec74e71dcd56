"""The Redis store's share of what replicas coordinate on (hub/lease.py): the rounds
driver's lease and fencing tokens, the fenced run writes, the shared rate-limit buckets.

Keys (under the store's prefix): ``{rounds}:lease:<name>`` a string ``<token>|<holder>`` with
a PX expiry, set with ``SET NX PX`` inside the script that also draws the token;
``{rounds}:lease_fence:<name>`` the newest fencing token (``INCR``, never expires);
``rate:<bucket>:<address>`` a hash (tokens, at) that expires once it would be full again.
Every operation is one script, so each is atomic, and Redis' own clock (``PX``, ``TIME``)
judges expiry: replicas on hosts whose clocks disagree still agree on who holds the lease.
The ``{rounds}`` hash tag puts the leases, their fences and the run and round records the
fenced writes guard (hub/store/redis.py) in one slot of a Redis Cluster: every script's keys
are in one slot (tests/hub/test_redis_cluster.py runs them on a cluster node).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis
from redis.commands.core import Script

from hub.store.base import Fence, LeaseRecord, RunRecord, StoreUnavailable

T = TypeVar("T")
# KEYS: lease, fence; ARGV: holder, ttl ms, the holder it may replace ('' for none)
_ACQUIRE_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local holder = string.sub(current, string.find(current, '|', 1, true) + 1)
  if ARGV[3] == '' or holder ~= ARGV[3] then return false end
  redis.call('DEL', KEYS[1])
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'NX', 'PX', ARGV[2])
return token
"""
# compare-and-extend; KEYS: lease; ARGV: token|holder, ttl ms
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
# KEYS: fence, hash; ARGV: token, field, value
_FENCED_HSET_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
# KEYS: bucket; ARGV: burst, per second
_SPEND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local level = burst
if saved[1] then level = math.min(burst, tonumber(saved[1]) + (now - tonumber(saved[2])) * rate) end
level = math.max(0, level - 1)
redis.call('HSET', KEYS[1], 'tokens', tostring(level), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
return tostring(level)
"""
_SCRIPTS = {
    "acquire": _ACQUIRE_LUA,
    "renew": _RENEW_LUA,
    "release": _RELEASE_LUA,
    "fenced_hset": _FENCED_HSET_LUA,
    "spend": _SPEND_LUA,
}


def _unavailable(fn: Callable[..., T]) -> Callable[..., T]:
    @wraps(fn)
    def wrapper(self: RedisReplicas, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from None

    return wrapper


class RedisReplicas:
    """Mixed into :class:`hub.store.redis.RedisStore` (``self.r``: its client, ``self._k`` and
    ``self._rounds_key``: its keys)."""

    if TYPE_CHECKING:
        r: redis.Redis

        def _k(self, *parts: str) -> str: ...

        def _rounds_key(self, *parts: str) -> str: ...

    def _script(self, name: str) -> Script:
        scripts: dict[str, Script] = self.__dict__.setdefault("_replica_scripts", {})
        if name not in scripts:
            scripts[name] = self.r.register_script(_SCRIPTS[name])
        return scripts[name]

    @_unavailable
    def acquire_lease(self, name: str, holder: str, ttl_s: float, replace: str | None = None) -> int | None:
        keys = [self._rounds_key("lease", name), self._rounds_key("lease_fence", name)]
        token = self._script("acquire")(keys=keys, args=[holder, max(1, int(ttl_s * 1000)), replace or ""])
        return None if token is None else int(token)

    @_unavailable
    def renew_lease(self, name: str, holder: str, token: int, ttl_s: float) -> bool:
        args: list[str | int] = [f"{token}|{holder}", max(1, int(ttl_s * 1000))]
        return bool(self._script("renew")(keys=[self._rounds_key("lease", name)], args=args))

    @_unavailable
    def release_lease(self, name: str, holder: str, token: int) -> bool:
        return bool(self._script("release")(keys=[self._rounds_key("lease", name)], args=[f"{token}|{holder}"]))

    @_unavailable
    def get_lease(self, name: str) -> LeaseRecord | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self._rounds_key("lease", name))
        pipe.pttl(self._rounds_key("lease", name))
        value, pttl = pipe.execute()
        if value is None or pttl < 0:
            return None
        token, _, holder = cast(bytes, value).decode().partition("|")
        return LeaseRecord(name, holder, int(token), pttl / 1000)

    def _fenced_hset(self, fence: Fence, key: str, field: str, value: str) -> bool:
        keys = [self._rounds_key("lease_fence", fence.lease), key]
        return bool(self._script("fenced_hset")(keys=keys, args=[str(fence.token), field, value]))

    @_unavailable
    def put_run_fenced(self, run: RunRecord, fence: Fence) -> bool:
        return self._fenced_hset(fence, self._rounds_key("fl_runs"), run.run_id, json.dumps(asdict(run)))

    @_unavailable
    def put_round_fenced(self, run_id: str, round_no: int, metrics: dict[str, Any], fence: Fence) -> bool:
        return self._fenced_hset(fence, self._rounds_key("fl_rounds", run_id), str(round_no), json.dumps(metrics))

    @_unavailable
    def spend_rate_token(self, bucket: str, address: str, burst: int, per_s: float) -> float:
        level = self._script("spend")(keys=[self._k("rate", bucket, address)], args=[burst, repr(per_s)])
        return float(level)
