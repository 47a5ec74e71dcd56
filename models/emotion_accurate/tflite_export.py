"""The fine-tuned encoder as int8 TFLite with ``litert-torch``, run in an interpreter of its own.

``litert-torch`` 0.10 (through ``ai-edge-quantizer`` -> ``xdsl``) pins
``typing-extensions < 4.13``, which would take the project's pydantic back to 2.11, so it
lives in a separate environment, named by ``NEXUS_TFLITE_PYTHON``; the pipeline runs
``python -m models.emotion_accurate.tflite_export CHECKPOINT OUT`` there (docs/models.md).
Its converter refuses dynamic shapes of this graph (``'<=' not supported between
'int' and 'Node'``), so the artifact takes exactly [1, max_length] int32 token ids and mask;
weights are int8 with float activations (``dynamic_wi8_afp32``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from models.emotion_accurate.finetune import EmotionEncoder, load_checkpoint, restore

#: the artifact's tensor names as the converter writes them (signature ``serving_default``)
IO = {
    "inputs": {"input_ids": "serving_default_input_ids", "attention_mask": "serving_default_attention_mask"},
    "outputs": {"scores": "serving_default_scores_output", "features": "serving_default_features_output"},
}


class _Graph(torch.nn.Module):
    def __init__(self, model: EmotionEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.model.pooled(input_ids.long(), attention_mask.long())
        return {"scores": torch.sigmoid(self.model.head(pooled)), "features": pooled}


def convert(checkpoint: Path, out: Path, n_labels: int, max_length: int) -> dict[str, object]:
    import litert_torch
    from ai_edge_quantizer import quantizer, recipe

    model = restore(load_checkpoint(checkpoint), n_labels)
    ids = torch.randint(1000, 2000, (1, max_length), dtype=torch.int32)
    converted = litert_torch.convert(
        _Graph(model).eval(), sample_kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    )
    fp32 = out.with_suffix(".fp32.tflite")
    converted.export(str(fp32))
    try:
        quantizer.Quantizer(str(fp32), recipe.dynamic_wi8_afp32()).quantize().export_model(str(out), overwrite=True)
    finally:
        fp32.unlink(missing_ok=True)
    return {**IO, "dtype": "int32", "shape": [1, max_length], "quantization": "dynamic_wi8_afp32"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    io = convert(args.checkpoint, args.out, args.labels, args.max_length)
    print(json.dumps(io))
    return 0


if __name__ == "__main__":
    sys.exit(main())
