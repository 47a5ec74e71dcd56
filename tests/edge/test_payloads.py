"""The egress gateway's declared payloads: what passes (with its audit summary) and what not."""

from __future__ import annotations

import numpy as np
import pytest

from edge_worker.funnels import FunnelConfig
from edge_worker.payloads import Declarations, PayloadRefused, check_payload, model_shapes
from models.export.onnx_graphs import save
from models.funnel.graphs import funnel_onnx
from nexus_wire.payloads import ASSIGNMENT_POLL, BUNDLE_DOWNLOAD, COUNTERS, ENROLLMENT, HEARTBEAT, MODEL_UPDATE

CONFIG = {
    "assignment": "sha256-u53/1",
    "funnels": [{"id": "checkout", "steps": ["view", "cart", "buy"]}],
    "experiments": [
        {
            "id": "exp-1",
            "funnel_id": "checkout",
            "status": "running",
            "version": 1,
            "salt": "",
            "variants": [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 1.0}],
        }
    ],
}
SHAPES = {"w0": (4, 3), "b0": (3,), "w1": (3, 1), "b1": (1,)}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> FunnelConfig:
    config = FunnelConfig(tmp_path_factory.mktemp("edge"))
    config.replace('"v1"', CONFIG)
    return config


@pytest.fixture(scope="module")
def declared(config) -> Declarations:
    return Declarations(models={"funnel": SHAPES}, counter_keys=config.counter_keys)


def _update(**overrides):
    arrays = {name: np.zeros(shape, dtype=np.float32) for name, shape in SHAPES.items()}
    return {"model": "funnel", "arrays": arrays, **overrides}


def _refused(kind, payload, declared, match):
    with pytest.raises(PayloadRefused, match=match) as info:
        check_payload(kind, payload, declared)
    assert info.value.kind == kind and info.value.reason in str(info.value)


def test_model_shapes_come_from_the_bundle(tmp_path):
    rng = np.random.default_rng(0)
    layers = [(rng.normal(size=SHAPES["w0"]), np.zeros(3)), (rng.normal(size=SHAPES["w1"]), np.zeros(1))]
    save(funnel_onnx(layers, int8=False), tmp_path / "model.onnx")
    assert model_shapes(tmp_path) == SHAPES


def test_counter_keys_come_from_the_config(config):
    keys = config.counter_keys
    assert ("exp-1", "a", "$assigned") in keys and ("exp-1", "b", "buy") in keys
    assert len(keys) == 2 * 4


def test_a_model_update_is_accepted_with_its_shapes_and_dp(declared):
    dp = {"noise_multiplier": 1.1, "clipping_norm": 1.0, "epsilon": 0.8, "delta": 1e-5}
    summary = check_payload(MODEL_UPDATE, _update(version="3", num_examples=120, dp=dp), declared)
    assert summary["arrays"]["w0"] == {"shape": [4, 3], "dtype": "float32"}
    assert summary["values"] == 12 + 3 + 3 + 1
    assert summary["dp"]["noise_multiplier"] == 1.1 and summary["num_examples"] == 120
    nested = _update(arrays={name: np.zeros(shape).tolist() for name, shape in SHAPES.items()})
    assert check_payload(MODEL_UPDATE, nested, declared)["arrays"]["b1"]["shape"] == [1]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"w0": np.zeros((4, 4))}, "shape"),
        ({"extra": np.zeros(2)}, "unexpected"),
        ({"b0": np.array(["a", "b", "c"])}, "numeric"),
        ({"b0": ["free", "text", "here"]}, "numeric"),
        ({"b0": np.array([1.0, np.nan, 0.0])}, "NaN"),
        ({"b0": [[1.0], [2.0, 3.0]]}, "rectangular|shape"),
    ],
)
def test_wrong_arrays_are_refused(declared, arrays, match):
    payload = _update()
    if "extra" not in arrays:
        payload["arrays"].update(arrays)
    else:
        payload["arrays"] = {**payload["arrays"], **arrays}
    _refused(MODEL_UPDATE, payload, declared, match)


def test_an_unknown_model_or_a_free_text_field_is_refused(declared):
    _refused(MODEL_UPDATE, _update(model="emotion"), declared, "not declared")
    _refused(MODEL_UPDATE, _update(note="the visitor said: I hate this shop"), declared, "'note' is not declared")
    _refused(MODEL_UPDATE, _update(version="latest and greatest"), declared, "free text")
    _refused(MODEL_UPDATE, _update(dp={"comment": "x"}), declared, "not declared")


def test_counters_are_accepted_with_a_count_summary(declared):
    payload = {
        "node_id": "edge-1",
        "counts": [
            {"experiment": "exp-1", "variant": "a", "step": "$assigned", "count": 10},
            {"experiment": "exp-1", "variant": "b", "step": "buy", "count": 2},
        ],
    }
    assert check_payload(COUNTERS, payload, declared) == {"keys": 2, "total": 12}


@pytest.mark.parametrize(
    "item, match",
    [
        ({"experiment": "exp-1", "variant": "a", "step": "view", "count": 1.5}, "integer"),
        ({"experiment": "exp-1", "variant": "a", "step": "view", "count": True}, "integer"),
        ({"experiment": "exp-1", "variant": "a", "step": "view", "count": "3"}, "integer"),
        ({"experiment": "exp-1", "variant": "a", "step": "view", "count": -1}, "integer in"),
        ({"experiment": "exp-1", "variant": "c", "step": "view", "count": 1}, "funnel config"),
        ({"experiment": "exp-1", "variant": "a", "step": "alice@example.com", "count": 1}, "funnel config"),
        (
            {"experiment": "exp-1", "variant": "a", "step": "view", "count": 1, "visitor": "v-9"},
            "'visitor' is not declared",
        ),
    ],
)
def test_bad_counters_are_refused(declared, item, match):
    _refused(COUNTERS, {"node_id": "edge-1", "counts": [item]}, declared, match)


def test_a_free_text_node_id_is_refused(declared):
    _refused(COUNTERS, {"node_id": "Bob from accounting", "counts": []}, declared, "free text")


def test_heartbeats_take_only_the_fixed_fields(declared):
    payload = {"health": "ok", "models": {"funnel": "3"}, "request_rate": 2.5, "queue_depth": 0, "sync_errors": 1}
    assert check_payload(HEARTBEAT, payload, declared) == payload
    _refused(HEARTBEAT, {"health": "ok", "message": "all good here"}, declared, "'message' is not declared")
    _refused(HEARTBEAT, {"health": "fine, thanks"}, declared, "free text")
    _refused(HEARTBEAT, {"health": "ok", "models": {"funnel": "v3 beta"}}, declared, "free text")
    _refused(HEARTBEAT, {"health": "ok", "request_rate": float("inf")}, declared, "finite")
    _refused(HEARTBEAT, {"models": {}}, declared, "'health' is missing")


def test_heartbeats_carry_the_audit_log_figures(declared):
    audit = {"bytes_sent": 12_345, "audit_entries": 42, "audit_ok": True, "audit_verified_at": 1_790_000_000.5}
    payload = {"health": "ok", "models": {}, **audit}
    assert check_payload(HEARTBEAT, payload, declared) == payload
    _refused(HEARTBEAT, {"health": "ok", "bytes_sent": "12345 bytes to bob"}, declared, "bytes_sent must be an integer")
    _refused(HEARTBEAT, {"health": "ok", "audit_ok": "yes"}, declared, "audit_ok must be true or false")
    _refused(HEARTBEAT, {"health": "ok", "audit_entries": True}, declared, "audit_entries must be an integer")


def test_heartbeats_carry_the_newest_signed_tree_head(declared, tmp_path):
    from dataclasses import asdict

    from edge_worker.audit import AuditLog

    with AuditLog(tmp_path) as log:
        log.record_retention(0.0, 30, {})
        head = asdict(log.tree_head())
    summary = check_payload(HEARTBEAT, {"health": "ok", "audit_head": head}, declared)
    assert summary["audit_head"] == {"size": 1, "root": head["root"]}  # not the signature
    for change, match in [
        ({"root": "Bob " + head["root"][4:]}, "audit_head.root is not a hex sha256"),
        ({"signature": head["signature"][:-4] + "Bob="}, "audit_head.signature is not an Ed25519 signature"),
        ({"time": "Tuesday morning"}, "audit_head.time is not a UTC time"),
        ({"key_id": head["key_id"].upper()}, "audit_head.key_id is not a key id"),
        ({"size": 0}, "audit_head.size must be an integer in"),
        ({"note": "hi"}, "field 'note' is not declared"),
    ]:
        _refused(HEARTBEAT, {"health": "ok", "audit_head": {**head, **change}}, declared, match)
    _refused(HEARTBEAT, {"health": "ok", "audit_head": "size 1"}, declared, "audit_head must be an object")


def test_bundle_downloads_polls_and_enrollment(declared):
    request = {"model": "emotion", "version": "2", "name": "model.onnx"}
    assert check_payload(BUNDLE_DOWNLOAD, request, declared) == request
    _refused(BUNDLE_DOWNLOAD, {**request, "name": "my notes.txt"}, declared, "free text")
    assert check_payload(ASSIGNMENT_POLL, {}, declared) == {}
    _refused(ASSIGNMENT_POLL, {"since": "yesterday"}, declared, "not declared")
    token = "A" * 43
    assert check_payload(ENROLLMENT, {"token": token}, declared) == {"token_chars": 43}  # never the token itself
    _refused(ENROLLMENT, {"token": "please let me in"}, declared, "free text")


def test_unknown_kinds_and_non_objects_are_refused(declared):
    _refused("free-text", {"text": "hello"}, declared, "unknown payload kind")
    _refused(HEARTBEAT, "health=ok", declared, "must be an object")


def test_heartbeats_carry_a_bounded_consistency_proof(declared, tmp_path):
    from dataclasses import asdict

    from edge_worker.audit import AuditLog

    with AuditLog(tmp_path) as log:
        for _ in range(5):
            log.record_retention(0.0, 30, {})
        head, proof = asdict(log.tree_head()), log.consistency_proof(2).proof
    beat = {"health": "ok", "audit_head": head}
    summary = check_payload(HEARTBEAT, {**beat, "audit_consistency": {"first_size": 2, "proof": proof}}, declared)
    assert summary["audit_consistency"] == {"first_size": 2, "hashes": len(proof)}  # the log holds the hashes
    for consistency, match in [
        ({"first_size": 5, "proof": []}, "first_size must be below audit_head.size"),
        ({"first_size": 0, "proof": proof}, "first_size must be an integer in"),
        ({"first_size": 2, "proof": "ab"}, "proof must be a list of at most 128 hashes"),
        ({"first_size": 2, "proof": ["ab" * 32] * 129}, "proof must be a list of at most 128 hashes"),
        ({"first_size": 2, "proof": ["Bob " + proof[0][4:]]}, r"proof\[0\] is not a hex sha256"),
        ({"first_size": 2, "proof": proof, "note": "hi"}, "field 'note' is not declared"),
        ("from 2", "audit_consistency must be an object"),
    ]:
        _refused(HEARTBEAT, {**beat, "audit_consistency": consistency}, declared, match)
    _refused(HEARTBEAT, {"health": "ok", "audit_consistency": {"first_size": 1, "proof": []}}, declared, "below")
