"""`nexus bench models` measures every backend of every shipped bundle, and the emotion tiers side by side."""

from __future__ import annotations

import json

import nexus_cli
from models.bundle import DEFAULT_REPOSITORY, newest_bundle, verify_bundle


def test_bench_models_reports_latency_and_sizes_for_every_backend(capsys) -> None:
    assert nexus_cli.main(["bench", "models", "--repeats", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for family in ("emotion", "emotion-accurate", "funnel"):
        # every backend the bundle ships (the accurate tier's committed bundle leaves fp32 out)
        assert set(result[family]["backends"]) == set(verify_bundle(newest_bundle(DEFAULT_REPOSITORY, family)).backends)
        for figures in result[family]["backends"].values():
            assert figures["single_p50_us"] > 0 and figures["batch32_per_item_p50_us"] > 0
            assert figures["batch32_items_per_s"] > 0
        assert all(size > 0 for size in result[family]["sizes_bytes"].values())
    assert set(result["emotion"]["backends"]) == {"onnx", "onnx-int8", "tflite"}
    assert result["emotion"]["sizes_bytes"]["model.int8.onnx"] <= 8 * 1024 * 1024
    assert (result["emotion"]["tier"], result["emotion-accurate"]["tier"]) == ("fast", "accurate")
    ratio = result["tiers"]["emotion-accurate vs emotion"]
    assert ratio["single_p50_ratio"] > 1 and 0 < ratio["batch32_items_per_s_ratio"] < 1  # the price of accuracy
