"""Edge node settings: defaults < ``NEXUS_*`` environment variables < CLI arguments.

Every field ``foo_bar`` reads ``NEXUS_FOO_BAR``. ``nexus edge serve`` writes its CLI
arguments back into the environment, so uvicorn's worker processes (``--workers`` > 1)
build the very same settings with :meth:`EdgeSettings.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from models.bundle import DEFAULT_REPOSITORY
from models.errors import NexusError
from models.families import FAMILIES, Families
from nexus_service.serving import ServerLimits
from nexus_wire.datadir import EdgeDataDir

ENV_PREFIX = "NEXUS_"
#: what a node serves unless told otherwise: the fast emotion tier and the funnel. The accurate
#: tier (``emotion-accurate``) is opt-in: each worker would load its encoder at start-up whether or
#: not a request ever asks for it (its cost: docs/benchmarks.md, "Edge: the two emotion tiers")
DEFAULT_MODELS = ("emotion", "funnel")
# the artifact names of models.bundle.ARTIFACTS
Backend = Literal["onnx", "onnx-int8", "tflite"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "nexus-edge"


class EdgeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the model repository; default: the shipped bundles (read-only), or with ``hub_url`` the data
    #: dir's ``models`` folder, seeded with them at first start (edge_worker/own_models.py)
    models_dir: Path = DEFAULT_REPOSITORY
    data_dir: Path = Field(default_factory=default_data_dir)
    #: model names served from ``models_dir`` (a name is also the bundle's family); validated
    #: against the registry in the validation context's "families" (default: the shipped ones).
    #: Models whose families share a /v1 route (the emotion tiers) answer it by ``?model=``;
    #: without it, the first of them listed here answers (or the one ``default_models`` names)
    models: tuple[str, ...] = DEFAULT_MODELS
    #: models that answer their shared /v1 route without ``?model=``, one per route (default: the
    #: first of ``models`` serving it; e.g. ``emotion-accurate`` for the accurate tier on /v1/emotion)
    default_models: tuple[str, ...] = ()
    #: the artifact each model runs: ONNX fp32 (faster than int8 for this model on x86: docs/benchmarks.md),
    #: ONNX int8 or TFLite (LiteRT)
    emotion_backend: Backend = "onnx"
    #: the artifact each model runs; unset: the bundle's ``default_backend`` (the accurate tier's: ONNX int8)
    emotion_accurate_backend: Backend | None = None
    #: the artifact each model runs: ONNX fp32, ONNX int8 or TFLite (LiteRT)
    funnel_backend: Backend = "onnx"
    #: pin a version instead of serving the newest one
    emotion_version: str | None = None
    #: pin a version instead of serving the newest one
    emotion_accurate_version: str | None = None
    #: pin a version instead of serving the newest one
    funnel_version: str | None = None
    #: intra-op threads per model runner
    model_threads: int = Field(1, ge=1, le=64)
    #: threads running batches per worker process (default: usable cores / workers, at least 1)
    inference_threads: int | None = Field(None, ge=1, le=64)

    #: micro-batch concurrent requests onto one model call (false: one call per request)
    batching: bool = True
    #: the most items in one model call
    max_batch: int = Field(32, ge=1, le=4096)
    #: how long a batch waits for more requests before it runs
    max_delay_ms: float = Field(2.0, ge=0, le=1000)

    #: request limits: characters per text, texts and sessions per request, body bytes (4xx above)
    max_text_chars: int = Field(2000, ge=1)
    max_texts: int = Field(64, ge=1)
    max_sessions: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=256)
    #: requests per model waiting for or in inference, per worker; beyond: 429 with ``Retry-After``
    max_queued_requests: int = Field(128, ge=1, le=1_000_000)
    #: once a server process has started, freeze its heap out of the cyclic GC and raise the young
    #: generation's threshold (edge_worker/heap.py: full collections of the start-up heap made the p99)
    gc_tuning: bool = True

    #: open connections per worker process (nexus_service/serving.py); beyond: 503 with ``Retry-After``
    max_connections: int = Field(256, ge=1, le=1_000_000)
    #: seconds a client has to send a request's headers before the connection is closed
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    #: seconds a client has to send a whole request body; beyond: 408 and the connection is closed
    body_deadline_s: float = Field(10.0, gt=0, le=3600)
    #: seconds an idle keep-alive connection stays open
    keep_alive_s: int = Field(5, ge=1, le=3600)
    #: bytes of request bodies a worker holds at once (at least max_body_bytes); a body beyond: 503 + ``Retry-After``
    body_memory_bytes: int = Field(32 << 20, ge=256, le=1 << 40)

    #: labelled examples older than this are deleted from the local store
    retention_days: float = Field(30, gt=0)
    #: seconds between retention runs
    retention_interval_s: float = Field(3600, gt=0)
    #: seconds between full verifications of the audit log (linear in its size) for the heartbeat
    audit_verify_interval_s: float = Field(3600, gt=0)
    #: rescan ``models_dir`` for new versions every N seconds (0: only on reload())
    poll_interval_s: float = Field(0, ge=0)
    #: when set, the lifespan starts the sync agent (edge_worker/sync.py) against this hub
    hub_url: str | None = None
    #: one-time enrollment token for the hub, read by the sync agent (given directly, or in a file)
    enroll_token: str | None = None
    enroll_token_file: Path | None = None
    #: seconds between funnel syncs with the hub (config pull, counter report; edge_worker/funnels.py)
    funnel_sync_s: float = Field(5.0, gt=0)
    #: False when the Flower SuperNode runs beside the node (deploy/) rather than as its
    #: child (edge_worker/federation.py starts it once the node is enrolled)
    supernode: bool = True
    #: ``HOST:PORT`` of the hub's Flower SuperLink the child SuperNode joins, or ``auto``:
    #: the one the hub names (edge_worker/federation.py)
    superlink: str | None = None
    #: the child SuperNode's own (loopback) port; default: a free one
    supernode_port: int | None = Field(None, ge=1, le=65535)
    #: CA certificate of the hub SuperLink's TLS (its Fleet gateway): the child SuperNode joins
    #: over TLS, and ``auto`` then takes a SuperLink the hub names off loopback too (default: plain HTTP)
    superlink_root_cert: Path | None = None
    #: the child SuperNode's private key (ECDSA, OpenSSH format) when the SuperLink admits only
    #: registered SuperNodes (default: none)
    supernode_auth_key: Path | None = None

    #: this node's differential-privacy budget for federated updates (written to the data
    #: dir's privacy-budget.json at start, read by federated/audit_mod.py); unset: keep the file's
    privacy_epsilon: float | None = Field(None, gt=0)
    privacy_delta: float | None = Field(None, gt=0, lt=1)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    #: Open Inference Protocol v2 over gRPC on this port beside HTTP (edge_worker/oip_grpc.py;
    #: Triton's is 8001); unset: no gRPC. 0: a free port (one worker only)
    grpc_port: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _own_models_dir(cls, values: Any) -> Any:
        # the hub's rollouts are written into the repository: never the package's, shared by every edge on the host
        if isinstance(values, dict) and values.get("hub_url") and values.get("models_dir") is None:
            data_dir = values.get("data_dir") or default_data_dir()
            values = {**values, "models_dir": EdgeDataDir(Path(data_dir)).models}
        return values

    @field_validator("models_dir", "data_dir", "enroll_token_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # the SuperNode child runs in the data dir: a relative path would name another folder there
        return None if value is None else value.absolute()

    @field_validator("models", "default_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        families: Families = (info.context or {}).get("families", FAMILIES)
        unknown = [name for name in value if name not in families]
        if unknown or not value:
            known = ", ".join(families.names())
            raise ValueError(f"models must be a non-empty subset of {known}; got {', '.join(value) or 'none'}")
        return value

    @model_validator(mode="after")
    def _defaults_are_served(self, info: ValidationInfo) -> EdgeSettings:
        families: Families = (info.context or {}).get("families", FAMILIES)
        routes: dict[str, str] = {}
        for name in self.default_models:
            if name not in self.models:
                raise ValueError(f"default_models: {name!r} is not one of the served models ({', '.join(self.models)})")
            path = families.get(name).serving.path
            if path in routes:
                raise ValueError(f"default_models: {routes[path]} and {name} both claim {path}; name one per route")
            routes[path] = name
        return self

    @model_validator(mode="after")
    def _one_free_grpc_port(self) -> EdgeSettings:
        if self.grpc_port == 0 and self.workers > 1:
            raise ValueError("grpc_port 0 (a free port) needs workers 1: the workers must share one port")
        return self

    def server_limits(self) -> ServerLimits:
        return ServerLimits(
            max_connections=self.max_connections,
            header_timeout_s=self.header_timeout_s,
            body_deadline_s=self.body_deadline_s,
            keep_alive_s=self.keep_alive_s,
            body_memory_bytes=max(self.body_memory_bytes, self.max_body_bytes),
        )

    def pool_threads(self) -> int:
        # More threads than cores per process only adds GIL hand-offs: the featurizers are Python.
        if self.inference_threads is not None:
            return self.inference_threads
        return max(1, len(os.sched_getaffinity(0)) // self.workers)

    def backend(self, model: str) -> str | None:
        """``<model>_backend``; None (unset, or a family without a setting of its own): the bundle's default."""
        return self._own(f"{model}_backend", None)

    def pinned_version(self, model: str) -> str | None:
        """``<model>_version``; a family without a setting of its own serves its newest version."""
        return self._own(f"{model}_version", None)

    def limits(self, defaults: Mapping[str, int]) -> dict[str, int]:
        """A family's request limits (``Serving.limits``): its defaults, or this node's setting of that name."""
        return {name: self._own(name, default) for name, default in defaults.items()}

    def _own(self, name: str, default: Any) -> Any:
        name = name.replace("-", "_")  # emotion-accurate's settings are emotion_accurate_*
        return getattr(self, name) if name in type(self).model_fields else default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EdgeSettings:
        """Settings from ``NEXUS_*`` variables, then ``overrides`` (None values ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise NexusError(f"invalid edge settings ({problems})") from None

    def to_env(self) -> dict[str, str]:
        """The ``NEXUS_*`` variables that rebuild these settings in another process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + name.upper()] = str(value)
        return env
