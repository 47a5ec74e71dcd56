"""A tiny accurate-tier bundle built by the real pipeline, shared by the tests that need one.

A randomly initialised 2-layer, width-32 BERT (``finetune.load_encoder(config_overrides=...)``)
is fine-tuned for two epochs on the first rows of GoEmotions-Ekman train and exported
through ``pipeline.train``: the whole path of the shipped bundle, in seconds instead of
half an hour. Importing this module needs the ``train`` extra (torch, transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.emotion_accurate import finetune as ft
from models.emotion_accurate import pipeline
from tests.support.env import shared_data

TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TRAIN_ROWS, DEV_ROWS = 384, 256
CONFIG = ft.FinetuneConfig(epochs=2, batch_size=32, lr=1e-3, head_lr=3e-3, holdout=0.25, threads=1, seed=3)


@dataclass(frozen=True)
class TinyAccurate:
    #: the sample in the data set's layout (labels.txt, train.tsv, dev.tsv)
    data: Path
    #: a model repository holding emotion-accurate/1
    repo: Path
    bundle: Path
    #: the fine-tuned run the bundle was exported from
    checkpoint: Path


def sample_data(folder: Path) -> Path:
    """The first rows of train and dev in ``folder / "goemotions-ekman"`` (a temporary folder, never the repo)."""
    source = shared_data("goemotions-ekman")
    out = folder / "goemotions-ekman"
    out.mkdir(parents=True)
    (out / "labels.txt").write_text((source / "labels.txt").read_text())
    for name, rows in (("train.tsv", TRAIN_ROWS), ("dev.tsv", DEV_ROWS)):
        lines = (source / name).read_text(encoding="utf-8").splitlines()[:rows]
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def build(root: Path) -> TinyAccurate:
    data = sample_data(root / "data")
    bundle = pipeline.train(
        data, root / "repo", seed=3, show_progress=False, checkpoint=root / "run", config=CONFIG, encoder_overrides=TINY
    )
    return TinyAccurate(data, root / "repo", bundle.path, root / "run")
