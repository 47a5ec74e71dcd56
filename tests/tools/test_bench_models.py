"""`nexus bench models` measures every backend of both shipped bundles."""

from __future__ import annotations

import json

import nexus_cli


def test_bench_models_reports_latency_and_sizes_for_every_backend(capsys) -> None:
    assert nexus_cli.main(["bench", "models", "--repeats", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for family in ("emotion", "funnel"):
        assert set(result[family]["backends"]) == {"onnx", "onnx-int8", "tflite"}
        for figures in result[family]["backends"].values():
            assert figures["single_p50_us"] > 0 and figures["batch32_per_item_p50_us"] > 0
        assert all(size > 0 for size in result[family]["sizes_bytes"].values())
    assert result["emotion"]["sizes_bytes"]["model.int8.onnx"] <= 8 * 1024 * 1024
