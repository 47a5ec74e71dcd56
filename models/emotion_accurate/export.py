"""The fine-tuned encoder as ONNX: fp32 through torch's exporter, then int8 by onnxruntime (training time only).

One graph, two outputs: ``scores`` (sigmoid [B, C]) for serving and ``features`` (the
pooled [B, H] the head reads) so an edge can train the head on the frozen encoder.
Both inputs are int64 [B, L] with B and L dynamic. The exporter is torch's dynamo
exporter (it needs ``onnxscript``): the legacy TorchScript tracer bakes the
attention mask's padding branch of transformers 5 into the graph, and its scores then
differ by 0.03 on a batch of another length.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from models.emotion_accurate.finetune import EmotionEncoder
from models.emotion_accurate.head import find_head, read_head
from models.errors import NexusError

OPSET = 17
#: onnxruntime 1.18 (the oldest the project allows) reads IR <= 10; onnx 1.23 writes 14 unless told
MAX_IR_VERSION = 10
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("scores", "features")


class ServingGraph(torch.nn.Module):
    """What the artifact computes: scores and pooled features of a padded batch."""

    def __init__(self, model: EmotionEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.pooled(input_ids, attention_mask)
        return torch.sigmoid(self.model.head(pooled)), pooled


def export_onnx(model: EmotionEncoder, path: Path, max_length: int) -> None:
    """fp32 ONNX with dynamic batch and length (1..max_length)."""
    graph = ServingGraph(model.eval())
    ids = torch.randint(1000, 2000, (2, min(8, max_length)), dtype=torch.int64)
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=max_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about every renamed dimension
        program = torch.onnx.export(
            graph,
            (ids, mask),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise NexusError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def quantize_onnx(fp32: Path, int8: Path) -> None:
    """Dynamic int8: weights of MatMul/Gemm int8 per channel, activations quantized per batch at run time.

    Per-channel keeps the pooled features close to fp32 (what the head and its federated
    training read). The word embeddings (a Gather, 30522 x 384) are int8 too: fp32 they
    would be 47 MB of a 55 MB artifact. The head (384 x C) stays fp32: a federated update
    trains only the head, and its bundle is this artifact with the head's initializers
    replaced (``head.py``), which an int8 head would not allow.
    """
    ref = find_head(onnx.load_model(str(fp32)))
    # the quantizer first splits a Gemm into NAME_MatMul + NAME_Add, then quantizes the MatMul
    keep = [*ref.nodes, *(f"{name}_MatMul" for name in ref.nodes)]
    quantize_dynamic(
        str(fp32),
        str(int8),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        nodes_to_exclude=keep,
    )
    model = onnx.load_model(str(int8))
    read_head(model)  # NexusError if the quantizer touched the head after all
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save_model(model, str(int8))
