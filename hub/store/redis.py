"""Redis store: for production and for several hub replicas sharing one state.

Bundle archives live in Redis next to their records, so any replica can serve any
download without a shared filesystem. The cost is memory: each version's archive
(a few MB) stays resident; that is the trade-off we take for stateless replicas.

Keys (all under a prefix, ``nexus:hub:`` unless the URL says ``?prefix=``):
``meta`` hash; ``enroll:<hash>`` string with a TTL; ``nodes`` set, ``node:<id>`` hash;
``ended_session:<id>`` string with a TTL (a dashboard session ended at logout);
``models`` set, ``versions:<model>`` hash version -> record JSON,
``archive:<model>:<version>`` bytes; ``actions:<model>`` hash id -> record JSON,
``action_seq`` counter; ``funnels`` hash id -> steps JSON; ``experiments`` hash id -> newest
record JSON, ``experiment_history:<id>`` hash version -> record JSON, ``running_experiments``
hash funnel -> experiment id; ``counters:<experiment>`` hash ``variant:step:node`` -> count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from hub.counters import CounterState
from hub.funnel_config import Experiment, Funnel
from hub.store.base import (
    ActionKind,
    ExperimentRecord,
    NodeRecord,
    RolloutAction,
    RunRecord,
    Store,
    StoreUnavailable,
    UpdateOutcome,
    VersionRecord,
    experiment_from_json,
    experiment_to_json,
)
from models.bundle import version_key
from nexus_wire.counters import CounterKey

T = TypeVar("T")
_HEARTBEAT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[1], 'heartbeat', ARGV[2])
end
"""
# G-counter merge, one round trip per experiment: ARGV = field, count, field, count, ...
_MERGE_MAX_LUA = """
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""
# KEYS: experiments, running_experiments, experiment_history:<id>
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
# The client runs without decode_responses, so every reply is bytes; redis-py types replies
# as ``bytes | str`` (either setting), hence the casts to bytes below.


def _unavailable(fn: Callable[..., T]) -> Callable[..., T]:
    @wraps(fn)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis store {self.where}: {exc}") from None

    return wrapper


class RedisStore(Store):
    network_io = True

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, where: str = "") -> None:
        self.r = client
        self.p = prefix
        self.where = where
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
        client = redis.Redis.from_url(
            urlunsplit(parts._replace(query="")),
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
        return cls(client, prefix, where=f"{parts.hostname}:{parts.port or 6379}")

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

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
        pipe = self.r.pipeline()
        pipe.hset(self._k("node", node.node_id), mapping=fields)
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
        h = cast(dict[bytes, bytes], self.r.hgetall(self._k("node", node_id)))
        return self._node(node_id, h) if h else None

    @_unavailable
    def list_nodes(self) -> list[NodeRecord]:
        ids = sorted(i.decode() for i in cast(set[bytes], self.r.smembers(self._k("nodes"))))
        pipe = self.r.pipeline()
        for node_id in ids:
            pipe.hgetall(self._k("node", node_id))
        nodes = [self._node(i, h) for i, h in zip(ids, pipe.execute()) if h]
        return sorted(nodes, key=lambda n: (n.enrolled_at, n.node_id))

    @_unavailable
    def record_heartbeat(self, node_id: str, at: float, heartbeat: dict[str, Any]) -> None:
        # One round trip, and only for enrolled nodes: never resurrect a deleted hash.
        self._heartbeat(keys=[self._k("node", node_id)], args=[repr(at), json.dumps(heartbeat)])

    @_unavailable
    def revoke_node(self, node_id: str, at: float) -> NodeRecord | None:
        fields = cast(list[bytes] | None, self._revoke(keys=[self._k("node", node_id)], args=[repr(at)]))
        return self._node(node_id, dict(zip(fields[::2], fields[1::2]))) if fields else None

    @_unavailable
    def add_version(self, record: VersionRecord, archive: bytes) -> bool:
        # Archive first: a record is only visible once its bytes are downloadable.
        archive_key = self._k("archive", record.model, record.version)
        if not self.r.set(archive_key, archive, nx=True):
            return False
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
    def read_archive(self, model: str, version: str) -> bytes | None:
        return cast(bytes | None, self.r.get(self._k("archive", model, version)))

    @_unavailable
    def read_archive_range(self, model: str, version: str, offset: int, length: int) -> bytes | None:
        key = self._k("archive", model, version)
        data = cast(bytes, self.r.getrange(key, offset, offset + length - 1)) if length > 0 else b""
        # GETRANGE answers b"" both past the end and for a missing key
        return data if data or self.r.exists(key) else None

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

    # A run is one JSON value in the ``fl_runs`` hash, its rounds a ``fl_rounds:<run>`` hash.
    @_unavailable
    def put_run(self, run: RunRecord) -> None:
        self.r.hset(self._k("fl_runs"), run.run_id, json.dumps(asdict(run)))

    @_unavailable
    def get_run(self, run_id: str) -> RunRecord | None:
        raw = self.r.hget(self._k("fl_runs"), run_id)
        return RunRecord(**json.loads(raw)) if raw else None

    @_unavailable
    def list_runs(self) -> list[RunRecord]:
        runs = [RunRecord(**json.loads(v)) for v in self.r.hvals(self._k("fl_runs"))]
        return sorted(runs, key=lambda r: (r.created_at, r.run_id))

    @_unavailable
    def put_round(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        self.r.hset(self._k("fl_rounds", run_id), str(round_no), json.dumps(metrics))

    @_unavailable
    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        raw = self.r.hgetall(self._k("fl_rounds", run_id))
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
        if not self.r.hsetnx(self._k("experiments"), experiment.id, record):
            return False
        self.r.hset(self._k("experiment_history", experiment.id), str(experiment.version), record)
        return True

    @_unavailable
    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        raw = self.r.hget(self._k("experiments"), experiment_id)
        return self._record(raw) if raw else None

    @_unavailable
    def list_experiments(self) -> list[ExperimentRecord]:
        records = [self._record(v) for v in self.r.hvals(self._k("experiments"))]
        return sorted(records, key=lambda r: r.experiment.id)

    @_unavailable
    def update_experiment(self, experiment: Experiment, at: float) -> UpdateOutcome:
        e = experiment
        keys = [self._k("experiments"), self._k("running_experiments"), self._k("experiment_history", e.id)]
        args = [e.id, str(e.version - 1), self._record_json(e, at), e.funnel_id, str(e.status), str(e.version)]
        return self._update_experiment(keys=keys, args=args).decode()

    @_unavailable
    def experiment_history(self, experiment_id: str) -> list[ExperimentRecord]:
        records = [self._record(v) for v in self.r.hvals(self._k("experiment_history", experiment_id))]
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
