"""The declared payloads the egress gateway may send, and nothing else.

A payload passes only if every field is declared for its kind and every value is a number,
a numeric array of a known model's shapes, an id from the funnel config, or a string from
a fixed pattern (model names, versions, enums). A free-text string cannot fit any of
these, so raw inputs (texts, sessions, visitor ids) cannot leave through the gateway.

The wire layouts match the hub's request bodies (hub/schemas.py ``Heartbeat``,
hub/funnel_schemas.py ``NodeReportIn``, ``Enroll``). :func:`check_payload` returns a JSON
summary for the audit entry or raises :class:`PayloadRefused` with a one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ARTIFACTS
from models.errors import NexusError
from models.export.onnx_graphs import read_initializers
from nexus_wire.counters import CounterKey
from nexus_wire.heads import HEAD_KEY_ID, HEAD_ROOT, HEAD_SIGNATURE, HEAD_TIME
from nexus_wire.merkle import MAX_PROOF_HASHES
from nexus_wire.names import CONFIG_ID, FILE_NAME, MODEL_NAME, TOKEN, VERSION, fullmatch
from nexus_wire.payloads import (
    ASSIGNMENT_POLL,
    BUNDLE_DOWNLOAD,
    COUNTERS,
    ENROLLMENT,
    GATEWAY_KINDS,
    HEARTBEAT,
    MODEL_UPDATE,
)

_HEALTH = ("ok", "degraded", "starting", "unhealthy")
_DP_FIELDS = ("noise_multiplier", "clipping_norm", "sample_rate", "epsilon", "delta")
_MAX_INT = 2**53  # exact in a JSON double
#: the node's own audit log in the heartbeat: totals, the verdict of its last verification,
#: its newest signed tree head (the hub keeps the largest, so truncation shows there) and the
#: consistency proof from the head the hub holds to it (so a rewritten log shows there too)
_AUDIT_FIELDS = ("bytes_sent", "audit_entries", "audit_ok", "audit_verified_at", "audit_head", "audit_consistency")
# a tree head exactly as edge_worker.audit writes it (the hub checks the same formats)
_HEAD_FIELDS = ("size", "root", "time", "key_id", "signature")


class PayloadRefused(NexusError):
    """A payload that is not one of the declared schemas; ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} payload refused: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Declarations:
    """What this node may send: array shapes per model, counter keys from the funnel config."""

    #: model name -> array name -> shape
    models: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)
    #: (experiment id, variant, step) triples of the current funnel config
    counter_keys: frozenset[CounterKey] = frozenset()


def model_shapes(bundle_dir: Path) -> dict[str, tuple[int, ...]]:
    """The fp32 weight shapes of a bundle: exactly what a federated update may carry."""
    weights = read_initializers(Path(bundle_dir) / ARTIFACTS["onnx"])
    return {name: tuple(int(d) for d in array.shape) for name, array in weights.items()}


def check_payload(kind: str, payload: Any, declared: Declarations) -> dict[str, Any]:
    """The audit summary of a declared payload; :class:`PayloadRefused` for anything else."""
    checker = _CHECKERS.get(kind)
    if checker is None:
        raise PayloadRefused(kind, f"unknown payload kind; declared kinds are {', '.join(GATEWAY_KINDS)}")
    if not isinstance(payload, Mapping):
        raise PayloadRefused(kind, f"payload must be an object, got {type(payload).__name__}")
    try:
        return checker(payload, declared)
    except _Refusal as exc:
        raise PayloadRefused(kind, str(exc)) from None


# ---------------------------------------------------------------- field checks


class _Refusal(Exception):
    pass


def _fields(payload: Mapping[str, Any], required: Iterable[str], optional: Iterable[str] = ()) -> None:
    required = tuple(required)
    allowed = set(required) | set(optional)
    for name in payload:
        if name not in allowed:
            raise _Refusal(f"field {name!r} is not declared (allowed: {', '.join(sorted(allowed))})")
    for name in required:
        if name not in payload:
            raise _Refusal(f"required field {name!r} is missing")


def _pattern(name: str, value: Any, pattern: str, what: str) -> str:
    if not isinstance(value, str):
        raise _Refusal(f"{name} must be a string ({what}), got {type(value).__name__}")
    if not fullmatch(pattern, value):
        raise _Refusal(f"{name} is not {what}: free text is not allowed")
    return value


def _int(name: str, value: Any, minimum: int = 0) -> int:
    if type(value) is not int and not isinstance(value, np.integer):
        raise _Refusal(f"{name} must be an integer, got {type(value).__name__}")
    if not minimum <= int(value) <= _MAX_INT:
        raise _Refusal(f"{name} must be an integer in [{minimum}, 2**53], got {int(value)}")
    return int(value)


def _bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _Refusal(f"{name} must be true or false, got {type(value).__name__}")
    return value


def _number(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _Refusal(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum:
        raise _Refusal(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)


def _array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise _Refusal(f"array {name!r} is not a rectangular numeric array ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise _Refusal(f"array {name!r} must be numeric, got dtype {array.dtype}")
    if array.shape != shape:
        raise _Refusal(f"array {name!r} has shape {list(array.shape)}, the model declares {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise _Refusal(f"array {name!r} holds NaN or infinite values")
    return array


# ---------------------------------------------------------------- kinds


def _model_update(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    _fields(payload, ("model", "arrays"), ("version", "num_examples", "dp"))
    model = _pattern("model", payload["model"], MODEL_NAME, "a model name")
    shapes = declared.models.get(model)
    if shapes is None:
        raise _Refusal(f"model {model!r} is not declared (known: {', '.join(sorted(declared.models)) or 'none'})")
    arrays = payload["arrays"]
    if not isinstance(arrays, Mapping):
        raise _Refusal("arrays must be an object of array name -> numeric array")
    if set(arrays) != set(shapes):
        extra, missing = sorted(set(arrays) - set(shapes)), sorted(set(shapes) - set(arrays))
        raise _Refusal(f"arrays must be exactly the model's weights (unexpected: {extra}, missing: {missing})")
    summary: dict[str, Any] = {"model": model, "arrays": {}, "values": 0}
    for name in sorted(arrays):
        array = _array(name, arrays[name], shapes[name])
        summary["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        summary["values"] += int(array.size)
    if "version" in payload:
        summary["version"] = _pattern("version", payload["version"], VERSION, "a version number")
    if "num_examples" in payload:
        summary["num_examples"] = _int("num_examples", payload["num_examples"])
    if "dp" in payload:
        dp = payload["dp"]
        if not isinstance(dp, Mapping):
            raise _Refusal("dp must be an object of DP parameters")
        _fields(dp, (), _DP_FIELDS)
        summary["dp"] = {key: _number(f"dp.{key}", dp[key]) for key in sorted(dp)}
    return summary


def _counters(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    _fields(payload, ("node_id", "counts"))
    _pattern("node_id", payload["node_id"], CONFIG_ID, "a node id")
    counts = payload["counts"]
    if not isinstance(counts, list):
        raise _Refusal("counts must be a list of {experiment, variant, step, count}")
    total = 0
    for i, item in enumerate(counts):
        if not isinstance(item, Mapping):
            raise _Refusal(f"counts[{i}] must be an object")
        _fields(item, ("experiment", "variant", "step", "count"))
        key = (item["experiment"], item["variant"], item["step"])
        if not all(isinstance(part, str) for part in key) or key not in declared.counter_keys:
            raise _Refusal(f"counts[{i}] key {key!r} is not an (experiment, variant, step) of the funnel config")
        total += _int(f"counts[{i}].count", item["count"])
    return {"keys": len(counts), "total": total}


def _heartbeat(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    _fields(
        payload,
        ("health",),
        ("models", "request_rate", "queue_depth", "bundle_refusals", "sync_errors", *_AUDIT_FIELDS),
    )
    if payload["health"] not in _HEALTH:
        raise _Refusal(f"health must be one of {', '.join(_HEALTH)}: free text is not allowed")
    summary: dict[str, Any] = {"health": payload["health"]}
    models = payload.get("models", {})
    if not isinstance(models, Mapping):
        raise _Refusal("models must be an object of model name -> version")
    summary["models"] = {
        _pattern("models key", name, MODEL_NAME, "a model name"): _pattern(
            f"models.{name}", version, VERSION, "a version number"
        )
        for name, version in models.items()
    }
    if "request_rate" in payload:
        summary["request_rate"] = _number("request_rate", payload["request_rate"])
    for name in ("queue_depth", "bundle_refusals", "sync_errors", "bytes_sent", "audit_entries"):
        if name in payload:
            summary[name] = _int(name, payload[name])
    if "audit_ok" in payload:
        summary["audit_ok"] = _bool("audit_ok", payload["audit_ok"])
    if "audit_verified_at" in payload:
        summary["audit_verified_at"] = _number("audit_verified_at", payload["audit_verified_at"])
    if "audit_head" in payload:
        head = _audit_head(payload["audit_head"])
        summary["audit_head"] = {"size": head["size"], "root": head["root"]}  # the log itself holds the signature
    if "audit_consistency" in payload:
        size = summary.get("audit_head", {}).get("size", 0)
        summary["audit_consistency"] = _audit_consistency(payload["audit_consistency"], size)
    return summary


def _audit_consistency(value: Any, head_size: int) -> dict[str, Any]:
    """A consistency proof to the heartbeat's head: a smaller size and a bounded list of hex hashes."""
    if not isinstance(value, Mapping):
        raise _Refusal("audit_consistency must be an object {first_size, proof}")
    _fields(value, ("first_size", "proof"))
    first = _int("audit_consistency.first_size", value["first_size"], minimum=1)
    if first >= head_size:
        raise _Refusal("audit_consistency.first_size must be below audit_head.size (a proof needs a larger head)")
    proof = value["proof"]
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
        raise _Refusal(f"audit_consistency.proof must be a list of at most {MAX_PROOF_HASHES} hashes")
    for i, digest in enumerate(proof):
        _pattern(f"audit_consistency.proof[{i}]", digest, HEAD_ROOT, "a hex sha256")
    # the hashes follow from the log itself: the entry keeps what was proven
    return {"first_size": first, "hashes": len(proof)}


def _audit_head(head: Any) -> dict[str, Any]:
    """The node's newest signed tree head: a size and four fixed-format strings."""
    if not isinstance(head, Mapping):
        raise _Refusal("audit_head must be an object {size, root, time, key_id, signature}")
    _fields(head, _HEAD_FIELDS)
    return {
        "size": _int("audit_head.size", head["size"], minimum=1),
        "root": _pattern("audit_head.root", head["root"], HEAD_ROOT, "a hex sha256"),
        "time": _pattern("audit_head.time", head["time"], HEAD_TIME, "a UTC time"),
        "key_id": _pattern("audit_head.key_id", head["key_id"], HEAD_KEY_ID, "a key id"),
        "signature": _pattern("audit_head.signature", head["signature"], HEAD_SIGNATURE, "an Ed25519 signature"),
    }


def _bundle_download(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    """A bundle file request: sent as the URL path, checked like a body."""
    _fields(payload, ("model", "version", "name"))
    return {
        "model": _pattern("model", payload["model"], MODEL_NAME, "a model name"),
        "version": _pattern("version", payload["version"], VERSION, "a version number"),
        "name": _pattern("name", payload["name"], FILE_NAME, "a bundle file name"),
    }


def _assignment_poll(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    _fields(payload, ())
    return {}


def _enrollment(payload: Mapping[str, Any], declared: Declarations) -> dict[str, Any]:
    _fields(payload, ("token",))
    # The token is a secret: the audit entry records that one was sent, never its value.
    return {"token_chars": len(_pattern("token", payload["token"], TOKEN, "an enrollment token"))}


_CHECKERS: dict[str, Callable[[Mapping[str, Any], Declarations], dict[str, Any]]] = {
    MODEL_UPDATE: _model_update,
    COUNTERS: _counters,
    HEARTBEAT: _heartbeat,
    ENROLLMENT: _enrollment,
    ASSIGNMENT_POLL: _assignment_poll,
    BUNDLE_DOWNLOAD: _bundle_download,
}
