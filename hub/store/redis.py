"""Redis store: for production and for several hub replicas sharing one state.

Bundle archives live in the blob store (hub/blobs/), not here: Redis holds records and
digests only. Archives that stores written before that hold inline (``archive:<model>:<version>``)
are still read.

A node's own requests are the hub's hot path, and they run on the event loop on a
``redis.asyncio`` client (hiredis parses the replies): checking a credential is one ``HGETALL``;
a heartbeat is one script that checks the credential and writes, compare-and-set on the node's
``beat_seq`` (the hub computes the new heartbeat from the previous one, which it keeps per node
from its last write; when another write came in between, the script answers with the record
and the hub computes again). Everything else goes through the blocking client in a worker
thread (hub.state.store_call).

Keys (all under a prefix, ``nexus:hub:`` unless the URL says ``?prefix=``); a ``{...}`` part is
a hash tag: the keys one script or transaction touches share one, so each stays in one slot of a
Redis Cluster:
``meta`` hash; ``enroll:<hash>`` string with a TTL; ``nodes`` set, ``{node:<id>}`` hash;
``ended_session:<id>`` string with a TTL (a dashboard session ended at logout);
``models`` set, ``versions:<model>`` hash version -> record JSON; ``actions:<model>`` hash
id -> record JSON, ``action_seq`` counter; ``funnels`` hash id -> steps JSON; ``{experiments}``
hash id -> newest record JSON, ``{experiments}:history:<id>`` hash version -> record JSON,
``{experiments}:running`` hash funnel -> experiment id; ``counters:<experiment>`` hash
``variant:step:node`` -> count; ``{rounds}:fl_runs`` hash run id -> record JSON,
``{rounds}:fl_rounds:<run>`` hash round -> metrics JSON, in the slot of the rounds driver's
lease and fencing token (hub/store/redis_replicas.py), which the fenced writes check in the same
script. ``meta`` field ``layout`` says which layout a store has; the keys of an older one
(layout 1: ``node:<id>``, ``experiments``, ``running_experiments``, ``experiment_history:<id>``;
layouts 1 and 2: ``fl_runs``, ``fl_rounds:<run>``) are renamed to this one when a hub opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict
from functools import partial, wraps
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from hub.blobs.base import ArchiveReader
from hub.counters import CounterState
from hub.funnel_config import Experiment, Funnel
from hub.store.base import (
    ActionKind,
    ExperimentRecord,
    NodeCheck,
    NodeRecord,
    NodeStatus,
    RolloutAction,
    RunRecord,
    Store,
    StoreUnavailable,
    UpdateOutcome,
    VersionRecord,
    check_credential,
    experiment_from_json,
    experiment_to_json,
)
from hub.store.redis_replicas import RedisReplicas
from models.bundle import version_key
from nexus_wire.counters import CounterKey

T = TypeVar("T")
R = TypeVar("R")
_HEARTBEAT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[1], 'heartbeat', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'beat_seq', 1)
end
"""
# A node's heartbeat in one round trip: its credential, then compare-and-set on beat_seq.
# KEYS: {node:<id>}; ARGV: sha256 of the secret shown, the beat_seq the heartbeat was computed
# from, at, heartbeat JSON. The hashes compared are of 256-bit random secrets: how long the
# comparison takes says nothing that helps find a secret.
_NODE_HEARTBEAT_LUA = """
local h = redis.call('HMGET', KEYS[1], 'secret_hash', 'revoked_at', 'beat_seq')
if not h[1] or h[1] ~= ARGV[1] then return {'unknown'} end
if h[2] then return {'revoked'} end
local seq = h[3] or '0'
if seq ~= ARGV[2] then return {'stale', redis.call('HGETALL', KEYS[1])} end
seq = tostring(tonumber(seq) + 1)
redis.call('HSET', KEYS[1], 'last_seen', ARGV[3], 'heartbeat', ARGV[4], 'beat_seq', seq)
return {'ok', seq}
"""
# G-counter merge, one round trip per experiment: ARGV = field, count, field, count, ...
_MERGE_MAX_LUA = """
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""
# KEYS: {experiments}, {experiments}:running, {experiments}:history:<id> (one hash tag: one slot)
# ARGV: id, expected (previous) version, record JSON, funnel id, status, version
_UPDATE_EXPERIMENT_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw or tostring(cjson.decode(raw)['experiment']['version']) ~= ARGV[2] then return 'stale' end
local holder = redis.call('HGET', KEYS[2], ARGV[4])
if ARGV[5] == 'running' then
  if holder and holder ~= ARGV[1] then return 'busy' end
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
elseif holder == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[6], ARGV[3])
return 'ok'
"""
_SWAP_META_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
# only an enrolled node, and the first revocation is kept; returns the node's fields
_REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
DEFAULT_PREFIX = "nexus:hub:"
#: the key layout this code writes (module docstring)
LAYOUT = "3"
#: nodes whose last heartbeat this replica keeps to compute the next one from (about 1 KB each)
BEAT_CACHE = 50_000
#: rounds of a heartbeat's compare-and-set before the hub gives up (503): writes racing that long
BEAT_ATTEMPTS = 5
_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# The client runs without decode_responses, so every reply is bytes; redis-py types replies
# as ``bytes | str`` (either setting), hence the casts to bytes below.


def _unavailable(fn: Callable[..., T]) -> Callable[..., T]:
    @wraps(fn)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except _DOWN as exc:
            raise StoreUnavailable(f"Redis store {self.where}: {exc}") from None

    return wrapper


def _unavailable_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., Coroutine[Any, Any, T]]:
    @wraps(fn)
    async def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except _DOWN as exc:
            raise StoreUnavailable(f"Redis store {self.where}: {exc}") from None

    return wrapper


class _InlineArchive(ArchiveReader):
    """An archive a layout-1 store holds as one string: read with GETRANGE."""

    def __init__(self, store: RedisStore, key: str) -> None:
        self.store, self.key = store, key

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return cast(bytes, self.store.r.getrange(self.key, offset, offset + length - 1))
        except _DOWN as exc:
            raise StoreUnavailable(f"Redis store {self.store.where}: {exc}") from None


class _AsyncSide:
    """The store's asyncio client on one event loop. Heartbeats that arrive in the same turn of
    the loop go to Redis as one pipeline: one write and one read for all of them, where a call
    each would cost a socket write, a read and a pooled connection per request."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._sha = hashlib.sha1(_NODE_HEARTBEAT_LUA.encode()).hexdigest()
        self._queue: list[tuple[list[EncodableT], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # held, so a batch in flight is not collected

    async def heartbeat(self, key: str, args: list[EncodableT]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(([key, *args], future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[EncodableT], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._pipeline([args for args, _ in batch])
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # a Redis restarted or flushed since: load the script, send those again
                await self.client.script_load(_NODE_HEARTBEAT_LUA)
                for i, reply in zip(missing, await self._pipeline([batch[i][0] for i in missing]), strict=True):
                    replies[i] = reply
        except Exception as exc:  # the connection: every caller of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its request was cancelled (the client went away)
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[list[EncodableT]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(self._sha, 1, *args)
        return await pipe.execute(raise_on_error=False)


class RedisStore(RedisReplicas, Store):
    network_io = True

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        where: str = "",
        *,
        async_client: Callable[[], redis.asyncio.Redis],
    ) -> None:
        self.r = client
        self.p = prefix
        self.where = where
        # one asyncio client per event loop (its connections belong to that loop)
        self._async_client = async_client
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncSide] = weakref.WeakKeyDictionary()
        #: node id -> (beat_seq, heartbeat) of this replica's last write: what the next one starts from
        self._beats: OrderedDict[str, tuple[bytes, dict[str, Any] | None]] = OrderedDict()
        self._heartbeat = client.register_script(_HEARTBEAT_LUA)
        self._merge_max = client.register_script(_MERGE_MAX_LUA)
        self._update_experiment = client.register_script(_UPDATE_EXPERIMENT_LUA)
        self._swap_meta = client.register_script(_SWAP_META_LUA)
        self._revoke = client.register_script(_REVOKE_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        parts = urlsplit(url)
        prefix = parse_qs(parts.query).get("prefix", [DEFAULT_PREFIX])[0]
        # A short retry hides a Redis failover blip; a longer outage surfaces as 503s.
        bare = urlunsplit(parts._replace(query=""))
        options: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 1.0,
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            "health_check_interval": 30,
        }
        client = redis.Redis.from_url(bare, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3), **options)
        async_client = partial(
            redis.asyncio.Redis.from_url,
            bare,
            retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            **options,
        )
        store = cls(client, prefix, where=f"{parts.hostname}:{parts.port or 6379}", async_client=async_client)
        store.migrate()
        return store

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def _node_key(self, node_id: str) -> str:
        return f"{self.p}{{node:{node_id}}}"

    def _experiments_key(self, *parts: str) -> str:
        return self.p + ":".join(("{experiments}", *parts))

    def _rounds_key(self, *parts: str) -> str:
        """Runs, rounds and the rounds lease: one hash tag, as a fenced write touches them together."""
        return self.p + ":".join(("{rounds}", *parts))

    @_unavailable
    def migrate(self) -> None:
        """Rename an older store's keys to this layout (module docstring); idempotent, and
        replicas opening the store at once each rename what is left. (On a Redis Cluster a key
        that moves to another slot is not renamed: a store of an older layout, whose scripts
        crossed slots, never ran on one.)"""
        if cast(bytes | None, self.r.hget(self._k("meta"), "layout")) == LAYOUT.encode():
            return
        nodes = [n.decode() for n in cast(set[bytes], self.r.smembers(self._k("nodes")))]
        renames = [(self._k("node", n), self._node_key(n)) for n in nodes]
        old_experiments = self._k("experiments")
        experiments = [e.decode() for e in cast(list[bytes], self.r.hkeys(old_experiments))]
        renames += [(old_experiments, self._experiments_key())]
        renames += [(self._k("running_experiments"), self._experiments_key("running"))]
        renames += [(self._k("experiment_history", e), self._experiments_key("history", e)) for e in experiments]
        runs = [r.decode() for r in cast(list[bytes], self.r.hkeys(self._k("fl_runs")))]
        renames += [(self._k("fl_runs"), self._rounds_key("fl_runs"))]
        renames += [(self._k("fl_rounds", r), self._rounds_key("fl_rounds", r)) for r in runs]
        for old, new in renames:
            with contextlib.suppress(redis.ResponseError):  # gone: renamed by another replica, or never there
                self.r.renamenx(old, new)
        self.r.hset(self._k("meta"), "layout", LAYOUT)

    def _side(self) -> _AsyncSide:
        loop = asyncio.get_running_loop()
        side = self._loops.get(loop)
        if side is None:
            side = self._loops[loop] = _AsyncSide(self._async_client())
        return side

    async def aclose(self) -> None:
        side = self._loops.pop(asyncio.get_running_loop(), None)
        if side is not None:
            await side.client.aclose()

    @_unavailable_async
    async def check_node(self, node_id: str, secret_hash: str) -> NodeCheck:
        h = cast(dict[bytes, bytes], await self._side().client.hgetall(self._node_key(node_id)))
        return check_credential(self._node(node_id, h) if h else None, secret_hash)

    @_unavailable_async
    async def heartbeat_node(
        self,
        node_id: str,
        secret_hash: str,
        at: float,
        update: Callable[[dict[str, Any] | None], tuple[dict[str, Any], R]],
    ) -> tuple[NodeStatus, R | None]:
        side = self._side()
        # a node this replica has not written yet is guessed new (no heartbeat, beat_seq 0)
        seq, previous = self._beats.get(node_id, (b"0", None))
        for _ in range(BEAT_ATTEMPTS):
            beat, result = update(previous)
            args: list[EncodableT] = [secret_hash, seq, repr(at), json.dumps(beat)]
            reply = cast(list[Any], await side.heartbeat(self._node_key(node_id), args))
            status = reply[0]
            if status == b"ok":
                self._remember(node_id, reply[1], beat)
                return "ok", result
            if status != b"stale":
                self._beats.pop(node_id, None)
                return "revoked" if status == b"revoked" else "unknown", None
            fields = dict(zip(reply[1][::2], reply[1][1::2]))
            seq, previous = fields.get(b"beat_seq", b"0"), self._node(node_id, fields).heartbeat
        raise StoreUnavailable(f"Redis store {self.where}: heartbeats of {node_id} kept racing")

    def _remember(self, node_id: str, seq: bytes, beat: dict[str, Any]) -> None:
        self._beats[node_id] = (seq, beat)
        self._beats.move_to_end(node_id)
        if len(self._beats) > BEAT_CACHE:
            self._beats.popitem(last=False)

    @_unavailable
    def ping(self) -> None:
        self.r.ping()

    def close(self) -> None:
        self.r.close()

    @_unavailable
    def claim_meta(self, key: str, value: str) -> str:
        self.r.hsetnx(self._k("meta"), key, value)
        return cast(bytes, self.r.hget(self._k("meta"), key)).decode()

    @_unavailable
    def get_meta(self, key: str) -> str | None:
        value = cast(bytes | None, self.r.hget(self._k("meta"), key))
        return value.decode() if value is not None else None

    @_unavailable
    def swap_meta(self, key: str, old: str, new: str) -> bool:
        return bool(self._swap_meta(keys=[self._k("meta")], args=[key, old, new]))

    @_unavailable
    def end_session(self, session_id: str, expires_at: float, now: float) -> None:
        # the TTL forgets it when its cookie would be refused anyway
        self.r.set(self._k("ended_session", session_id), b"1", ex=max(1, int(expires_at - now) + 1))

    @_unavailable
    def session_ended(self, session_id: str) -> bool:
        return bool(self.r.exists(self._k("ended_session", session_id)))

    @_unavailable
    def add_enroll_token(self, token_hash: str, tags: dict[str, str], expires_at: float) -> None:
        # The expiry check compares with the caller's clock; the Redis TTL only collects
        # garbage, a day after the token could have been used.
        ttl = max(int(expires_at - time.time()), 0) + 86400
        self.r.set(self._k("enroll", token_hash), json.dumps({"tags": tags, "expires_at": expires_at}), ex=ttl)

    @_unavailable
    def take_enroll_token(self, token_hash: str, now: float) -> dict[str, str] | None:
        raw = self.r.getdel(self._k("enroll", token_hash))
        if raw is None:
            return None
        body = json.loads(raw)
        return body["tags"] if body["expires_at"] >= now else None

    @_unavailable
    def add_node(self, node: NodeRecord) -> None:
        fields: dict[FieldT, EncodableT] = {
            "secret_hash": node.secret_hash,
            "tags": json.dumps(node.tags),
            "enrolled_at": repr(node.enrolled_at),
        }
        # two slots on a cluster, so no transaction: the record first, so a listed node always has one
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self._node_key(node.node_id), mapping=fields)
        pipe.sadd(self._k("nodes"), node.node_id)
        pipe.execute()

    @staticmethod
    def _node(node_id: str, h: dict[bytes, bytes]) -> NodeRecord:
        last_seen = h.get(b"last_seen")
        heartbeat = h.get(b"heartbeat")
        return NodeRecord(
            node_id=node_id,
            secret_hash=h[b"secret_hash"].decode(),
            tags=json.loads(h[b"tags"]),
            enrolled_at=float(h[b"enrolled_at"]),
            last_seen=float(last_seen) if last_seen else None,
            heartbeat=json.loads(heartbeat) if heartbeat else None,
            revoked_at=float(h[b"revoked_at"]) if h.get(b"revoked_at") else None,
        )

    @_unavailable
    def get_node(self, node_id: str) -> NodeRecord | None:
        h = cast(dict[bytes, bytes], self.r.hgetall(self._node_key(node_id)))
        return self._node(node_id, h) if h else None

    @_unavailable
    def list_nodes(self) -> list[NodeRecord]:
        ids = sorted(i.decode() for i in cast(set[bytes], self.r.smembers(self._k("nodes"))))
        pipe = self.r.pipeline(transaction=False)
        for node_id in ids:
            pipe.hgetall(self._node_key(node_id))
        nodes = [self._node(i, h) for i, h in zip(ids, pipe.execute()) if h]
        return sorted(nodes, key=lambda n: (n.enrolled_at, n.node_id))

    @_unavailable
    def record_heartbeat(self, node_id: str, at: float, heartbeat: dict[str, Any]) -> None:
        # One round trip, and only for enrolled nodes: never resurrect a deleted hash.
        self._heartbeat(keys=[self._node_key(node_id)], args=[repr(at), json.dumps(heartbeat)])

    @_unavailable
    def revoke_node(self, node_id: str, at: float) -> NodeRecord | None:
        fields = cast(list[bytes] | None, self._revoke(keys=[self._node_key(node_id)], args=[repr(at)]))
        return self._node(node_id, dict(zip(fields[::2], fields[1::2]))) if fields else None

    @_unavailable
    def add_version(self, record: VersionRecord) -> bool:
        if not self.r.hsetnx(self._k("versions", record.model), record.version, json.dumps(asdict(record))):
            return False
        self.r.sadd(self._k("models"), record.model)
        return True

    @_unavailable
    def get_version(self, model: str, version: str) -> VersionRecord | None:
        raw = self.r.hget(self._k("versions", model), version)
        return VersionRecord(**json.loads(raw)) if raw else None

    @_unavailable
    def list_versions(self, model: str) -> list[VersionRecord]:
        records = [VersionRecord(**json.loads(v)) for v in self.r.hvals(self._k("versions", model))]
        return sorted(records, key=lambda r: version_key(r.version))

    @_unavailable
    def list_models(self) -> list[str]:
        return sorted(m.decode() for m in cast(set[bytes], self.r.smembers(self._k("models"))))

    @_unavailable
    def open_inline_archive(self, model: str, version: str) -> ArchiveReader | None:
        key = self._k("archive", model, version)
        return _InlineArchive(self, key) if self.r.exists(key) else None

    @_unavailable
    def add_action(
        self, model: str, kind: ActionKind, version: str, selector: dict[str, str], percent: int, at: float
    ) -> RolloutAction:
        action = RolloutAction(
            model, int(self.r.incr(self._k("action_seq"))), kind, version, selector, percent, at, True
        )
        self.r.hset(self._k("actions", model), str(action.action_id), json.dumps(asdict(action)))
        return action

    @_unavailable
    def list_actions(self, model: str) -> list[RolloutAction]:
        actions = [RolloutAction(**json.loads(v)) for v in self.r.hvals(self._k("actions", model))]
        return sorted(actions, key=lambda a: a.action_id)

    @_unavailable
    def deactivate_action(self, model: str, action_id: int) -> bool:
        key = self._k("actions", model)
        # WATCH/MULTI: of two replicas rolling back the same action, exactly one wins.
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.hget(key, str(action_id))
                if raw is None:
                    return False
                action = json.loads(raw)
                if not action["active"]:
                    return False
                action["active"] = False
                pipe.multi()
                pipe.hset(key, str(action_id), json.dumps(action))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    # A run is one JSON value in the ``{rounds}:fl_runs`` hash, its rounds a ``{rounds}:fl_rounds:<run>`` hash.
    @_unavailable
    def put_run(self, run: RunRecord) -> None:
        self.r.hset(self._rounds_key("fl_runs"), run.run_id, json.dumps(asdict(run)))

    @_unavailable
    def get_run(self, run_id: str) -> RunRecord | None:
        raw = self.r.hget(self._rounds_key("fl_runs"), run_id)
        return RunRecord(**json.loads(raw)) if raw else None

    @_unavailable
    def list_runs(self) -> list[RunRecord]:
        runs = [RunRecord(**json.loads(v)) for v in self.r.hvals(self._rounds_key("fl_runs"))]
        return sorted(runs, key=lambda r: (r.created_at, r.run_id))

    @_unavailable
    def put_round(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        self.r.hset(self._rounds_key("fl_rounds", run_id), str(round_no), json.dumps(metrics))

    @_unavailable
    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        raw = self.r.hgetall(self._rounds_key("fl_rounds", run_id))
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    # -- funnels, experiments, counters ------------------------------------------------
    @_unavailable
    def add_funnel(self, funnel: Funnel) -> bool:
        return bool(self.r.hsetnx(self._k("funnels"), funnel.id, json.dumps(list(funnel.steps))))

    @_unavailable
    def get_funnel(self, funnel_id: str) -> Funnel | None:
        raw = self.r.hget(self._k("funnels"), funnel_id)
        return Funnel(funnel_id, tuple(json.loads(raw))) if raw else None

    @_unavailable
    def list_funnels(self) -> list[Funnel]:
        return sorted(
            (
                Funnel(k.decode(), tuple(json.loads(v)))
                for k, v in cast(dict[bytes, bytes], self.r.hgetall(self._k("funnels"))).items()
            ),
            key=lambda f: f.id,
        )

    @staticmethod
    def _record_json(experiment: Experiment, at: float) -> str:
        return json.dumps({"experiment": experiment_to_json(experiment), "at": at})

    @staticmethod
    def _record(raw: bytes | str) -> ExperimentRecord:
        body = json.loads(raw)
        return ExperimentRecord(experiment_from_json(body["experiment"]), body["at"])

    @_unavailable
    def add_experiment(self, experiment: Experiment, at: float) -> bool:
        record = self._record_json(experiment, at)
        if not self.r.hsetnx(self._experiments_key(), experiment.id, record):
            return False
        self.r.hset(self._experiments_key("history", experiment.id), str(experiment.version), record)
        return True

    @_unavailable
    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        raw = self.r.hget(self._experiments_key(), experiment_id)
        return self._record(raw) if raw else None

    @_unavailable
    def list_experiments(self) -> list[ExperimentRecord]:
        records = [self._record(v) for v in self.r.hvals(self._experiments_key())]
        return sorted(records, key=lambda r: r.experiment.id)

    @_unavailable
    def update_experiment(self, experiment: Experiment, at: float) -> UpdateOutcome:
        e = experiment
        keys = [self._experiments_key(), self._experiments_key("running"), self._experiments_key("history", e.id)]
        args = [e.id, str(e.version - 1), self._record_json(e, at), e.funnel_id, str(e.status), str(e.version)]
        return self._update_experiment(keys=keys, args=args).decode()

    @_unavailable
    def experiment_history(self, experiment_id: str) -> list[ExperimentRecord]:
        records = [self._record(v) for v in self.r.hvals(self._experiments_key("history", experiment_id))]
        return sorted(records, key=lambda r: r.experiment.version)

    @_unavailable
    def merge_counters(self, node_id: str, counts: Mapping[CounterKey, int]) -> None:
        by_experiment: dict[str, list[str | int]] = {}
        for (experiment, variant, step), count in counts.items():
            by_experiment.setdefault(experiment, []).extend((f"{variant}:{step}:{node_id}", count))
        pipe = self.r.pipeline(transaction=False)
        for experiment, args in by_experiment.items():
            self._merge_max(keys=[self._k("counters", experiment)], args=args, client=pipe)
        pipe.execute()

    @_unavailable
    def counter_state(self, experiment_id: str) -> CounterState:
        state: CounterState = {}
        counters = cast(dict[bytes, bytes], self.r.hgetall(self._k("counters", experiment_id)))
        for field_name, count in counters.items():
            variant, step, node = field_name.decode().split(":")
            state.setdefault((experiment_id, variant, step), {})[node] = int(count)
        return state

    def delete_all(self) -> None:
        """Drop every key under this store's prefix (tests and the benchmark clean up with it)."""
        for key in self.r.scan_iter(match=self.p + "*", count=500):
            self.r.delete(key)
