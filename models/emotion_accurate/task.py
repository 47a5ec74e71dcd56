"""Federated training of the accurate tier: the head on the frozen int8 encoder's features, in numpy.

An edge never trains the transformer: it runs the quantized encoder it already serves
(the base bundle's ``model.int8.onnx``) to get pooled features [N, H], and trains the
linear head ``sigmoid(features @ head_w + head_b)`` with binary cross-entropy, weighted
per label by ``sqrt(neg/pos)`` as the central fine-tune is (macro-F1 counts the rare
labels as much as the common ones), by Adam on minibatches, with FedProx's proximal term.
The weights a round carries are only ``head_w`` [H, C] and ``head_b`` [C] (a few KB), so
the update codec, the audit mod and DP clipping see small dense arrays like any other.

The spec's featurizer names the base bundle (name, version, sha256 of its int8 ONNX):
features from another encoder would make the global head meaningless, so a node whose
repository lacks that exact artifact refuses the round with a NexusError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from models.bundle import ARTIFACTS, DEFAULT_REPOSITORY, BundleError, newest_bundle, verify_bundle
from models.emotion import task as emotion_task
from models.emotion_accurate import HEAD_B, HEAD_W, NAME
from models.emotion_accurate.model import AccuratePredictor
from models.errors import NexusError
from models.runtime import open_runner
from models.task import Examples, ModelSpec, SimulationData, TrainOutput, Weights, random_split

#: the artifact whose encoder the edges run (what the edge serves by default)
BACKEND = "onnx-int8"
#: the featurizer key naming the base bundle
BASE = "base"
BATCH = 128
#: feature rows kept in memory per task (a simulation featurises the train and eval files once)
CACHE_ROWS = 200_000


class FeedbackStore(Protocol):
    """The part of the edge's local store that holds labelled texts."""

    path: Path

    def emotion_examples(self, labels: Sequence[str]) -> tuple[list[str], np.ndarray]: ...


class LocalTexts(list[str]):
    """An edge's labelled texts, with the model repositories where its bundles are.

    ``Task.featurize`` gets only the spec and the rows, and the accurate tier needs the
    node's copy of the base bundle; the rows say where the node keeps it.
    """

    def __init__(self, texts: Iterable[str], repositories: Sequence[Path]) -> None:
        super().__init__(texts)
        self.repositories = tuple(repositories)


def base_identity(bundle_dir: Path) -> dict[str, str]:
    """What a spec says of its base bundle: name, version and the sha256 of its int8 ONNX (verified)."""
    bundle = verify_bundle(bundle_dir)
    if bundle.manifest.get("family") != NAME:
        raise NexusError(f"{bundle_dir} is a {bundle.manifest.get('family')} bundle, not {NAME}")
    entry = bundle.manifest["files"].get(ARTIFACTS[BACKEND])
    if entry is None:
        raise NexusError(f"{bundle_dir}: no {ARTIFACTS[BACKEND]}, the encoder the edges train the head on")
    return {"name": bundle.name, "version": bundle.version, "sha256": str(entry["sha256"])}


def spec_of(bundle_dir: Path) -> ModelSpec:
    """The spec of a federated run based on ``bundle_dir``: its featurizer plus the base's identity."""
    bundle = verify_bundle(bundle_dir)
    identity = base_identity(bundle_dir)
    labels = tuple(str(name) for name in bundle.manifest["labels"])
    shape = {"hidden": int(bundle.manifest["architecture"]["hidden"]), "n_labels": len(labels)}
    return ModelSpec(NAME, {**bundle.manifest["featurizer"], BASE: identity}, labels, shape)


def base_head(bundle_dir: Path) -> Weights:
    """The base bundle's trained head (the starting point of a run from that bundle; imports onnx)."""
    import onnx

    from models.emotion_accurate import head

    bundle = verify_bundle(bundle_dir)
    return head.read_head(onnx.load_model(str(bundle.artifact(BACKEND))))


def _identity_of(spec: ModelSpec) -> dict[str, str]:
    base = spec.featurizer.get(BASE)
    if not isinstance(base, Mapping) or not all(isinstance(base.get(k), str) for k in ("name", "version", "sha256")):
        raise NexusError(f"{NAME} spec's featurizer must name its base bundle: {BASE} = {{name, version, sha256}}")
    if base["name"] != NAME:
        raise NexusError(f"{NAME} spec names a {base['name']!r} base bundle")
    return {k: str(base[k]) for k in ("name", "version", "sha256")}


def find_base(spec: ModelSpec, repositories: Sequence[Path]) -> Path:
    """The folder of the spec's base bundle in the first repository that holds it, byte for byte."""
    want = _identity_of(spec)
    seen: list[str] = []
    for repository in repositories:
        folder = Path(repository) / want["name"] / want["version"]
        if not (folder / "manifest.json").is_file():
            continue
        try:
            got = base_identity(folder)
        except NexusError as exc:  # a corrupt copy: say so, look on
            seen.append(f"{folder}: {exc}")
            continue
        if got["sha256"] == want["sha256"]:
            return folder
        seen.append(f"{folder}: int8 ONNX sha256 {got['sha256'][:12]}")
    where = "; ".join(seen) if seen else "absent from " + ", ".join(str(r) for r in repositories)
    raise NexusError(
        f"the round trains the head of {want['name']} version {want['version']} (int8 ONNX sha256"
        f" {want['sha256'][:12]}), which this node does not hold ({where}): refusing to train a head on"
        " another encoder's features"
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def pos_weight(labels: np.ndarray) -> np.ndarray:
    """Per-label BCE weight of positives, sqrt(neg/pos), as the central fine-tune uses."""
    y = np.asarray(labels, dtype=np.float64)
    pos = y.sum(0)
    return np.sqrt((len(y) - pos) / np.maximum(pos, 1.0))


def fit_head(
    weights: Weights,
    features: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    seed: int,
    lr: float,
    mu: float = 0.0,
) -> tuple[Weights, float]:
    """Adam on minibatches of the weighted BCE (+ mu/2 |w - w0|^2); the new weights and the last epoch's loss."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float32)
    w0 = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    w = {k: v.copy() for k, v in w0.items()}
    if len(x) == 0 or epochs <= 0:
        return w, float("nan")
    pw = pos_weight(y).astype(np.float32)
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(seed)
    step, loss = 0, float("nan")
    for _ in range(epochs):
        total = 0.0
        for rows in np.array_split(rng.permutation(len(x)), max(1, int(np.ceil(len(x) / BATCH)))):
            xb, yb = x[rows], y[rows]
            logits = xb @ w[HEAD_W] + w[HEAD_B]
            p = sigmoid(logits)
            # d/dz of -(pw*y*log p + (1-y)*log(1-p)) = p*(pw*y + 1 - y) - pw*y
            dz = (p * (pw * yb + 1.0 - yb) - pw * yb) / (len(rows) * y.shape[1])
            log_p = -np.logaddexp(0.0, -logits)
            log_q = -np.logaddexp(0.0, logits)
            total += float(-(pw * yb * log_p + (1.0 - yb) * log_q).mean()) * len(rows)
            grads = {HEAD_W: xb.T @ dz, HEAD_B: dz.sum(0)}
            step += 1
            for k, g in grads.items():
                if mu:
                    g = g + mu * (w[k] - w0[k])  # FedProx: stay near the round's global head
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v2[k] = beta2 * v2[k] + (1 - beta2) * g * g
                m_hat = m[k] / (1 - beta1**step)
                v_hat = v2[k] / (1 - beta2**step)
                w[k] = w[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
        loss = total / len(x)
    return {k: v.astype(np.float32) for k, v in w.items()}, loss


class AccurateTask:
    #: measured with the shipped bundle on an 8,000-row train sample, Dirichlet(0.5) over 10 nodes,
    #: dev scored (docs/federated.md): more head training on these features overfits (central at
    #: 1e-2 x 10 epochs: 0.620, at 3e-3 x 20: 0.622; federated at 1e-2 x 5 local epochs: 0.612,
    #: at 3e-3 x 3: 0.634)
    default_lr = 3e-3
    federated_local_epochs = 3
    federated_lr = 3e-3
    central_epochs = 20
    simulation_partition = "dirichlet:0.5"
    simulation_rounds = 10

    def __init__(self, repositories: Sequence[Path] = (DEFAULT_REPOSITORY,), threads: int = 1) -> None:
        """``repositories``: where the base bundle is looked for after a node's own (simulation: the shipped one)."""
        self.repositories = tuple(Path(r) for r in repositories)
        self.threads = threads
        self._predictors: dict[str, AccuratePredictor] = {}
        self._features: dict[tuple[str, bytes], np.ndarray] = {}

    def starting_point(self, bundle_dir: Path) -> tuple[ModelSpec, Weights]:
        """A federated run from an accurate bundle (``server_app.load_base``): its spec, naming it, and its head."""
        return spec_of(bundle_dir), base_head(bundle_dir)

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        """A fresh head: small random weights, zero bias (a run from a bundle starts from its head instead)."""
        hidden, n_labels = int(spec.shape["hidden"]), int(spec.shape["n_labels"])
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, n_labels)).astype(np.float32)
        return {HEAD_W: w, HEAD_B: np.zeros(n_labels, np.float32)}

    def shape_of(self, weights: Weights, labels: Sequence[str]) -> dict[str, int]:
        hidden, n_labels = weights[HEAD_W].shape
        if n_labels != len(labels) or weights[HEAD_B].shape != (n_labels,):
            raise NexusError(f"head of shape {weights[HEAD_W].shape} does not fit {len(labels)} labels")
        return {"hidden": int(hidden), "n_labels": int(n_labels)}

    def local_examples(self, store: FeedbackStore, spec: ModelSpec) -> tuple[Sequence[str], np.ndarray]:
        from nexus_wire.datadir import EdgeDataDir

        texts, labels = store.emotion_examples(spec.labels)
        # a node with a hub keeps its rollouts in its data dir's models/ (beside the store)
        return LocalTexts(texts, (EdgeDataDir(Path(store.path).parent).models,)), labels

    def _predictor(self, spec: ModelSpec, raw: Sequence[str]) -> tuple[str, AccuratePredictor]:
        sha = _identity_of(spec)["sha256"]
        if sha not in self._predictors:
            own = raw.repositories if isinstance(raw, LocalTexts) else ()
            folder = find_base(spec, (*own, *self.repositories))
            bundle = verify_bundle(folder)
            token_spec = {k: v for k, v in spec.featurizer.items() if k != BASE}
            if token_spec != bundle.manifest["featurizer"]:
                raise NexusError(f"{folder}: featurizer {bundle.manifest['featurizer']} is not the spec's {token_spec}")
            try:
                self._predictors[sha] = AccuratePredictor(bundle, open_runner(bundle, BACKEND, self.threads))
            except BundleError as exc:
                raise NexusError(str(exc)) from None
        return sha, self._predictors[sha]

    def featurize(self, spec: ModelSpec, raw: Sequence[str], labels: np.ndarray) -> Examples:
        """Pooled features [N, H] of the base bundle's int8 encoder (cached per text)."""
        hidden = int(spec.shape.get("hidden", 0))
        texts = [str(t) for t in raw]
        y = np.asarray(labels, dtype=bool).reshape(len(texts), len(spec.labels))
        if not texts:
            return Examples((np.zeros((0, hidden), np.float32),), y)
        sha, predictor = self._predictor(spec, raw)
        keys = [(sha, hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest()) for t in texts]
        missing = sorted({i for i, key in enumerate(keys) if key not in self._features}, key=lambda i: len(texts[i]))
        unique: dict[tuple[str, bytes], int] = {}
        for i in missing:
            unique.setdefault(keys[i], i)
        rows = list(unique.values())
        if len(self._features) + len(rows) > CACHE_ROWS:
            self._features.clear()
        for start in range(0, len(rows), 256):  # bounded memory for the encoder's activations
            chunk = rows[start : start + 256]
            for i, feature in zip(chunk, predictor.features([texts[i] for i in chunk])):
                self._features[keys[i]] = feature
        features = np.stack([self._features[key] for key in keys]).astype(np.float32)
        if hidden and features.shape[1] != hidden:
            raise NexusError(f"base encoder gives {features.shape[1]} features, the spec says {hidden}")
        return Examples((features,), y)

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return random_split(len(labels), seed)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        new, loss = fit_head(weights, data.inputs[0], data.labels, epochs, seed, lr, mu)
        return TrainOutput(new, loss)

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        features = np.asarray(data.inputs[0], dtype=np.float32)
        return sigmoid(features @ np.asarray(weights[HEAD_W], np.float32) + np.asarray(weights[HEAD_B], np.float32))

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        return emotion_task.metrics(scores, labels, seed)

    def simulation_data(self, data: Path, eval_data: Path | None) -> SimulationData:
        """GoEmotions-layout TSVs; the base is the newest accurate bundle of the first repository that has one."""
        labels, train, held = emotion_task.simulation_sets(data, eval_data)
        spec = spec_of(self._newest_base())
        if list(spec.labels) != list(labels):
            raise NexusError(f"the base bundle's labels {list(spec.labels)} are not {data}'s {labels}")
        return SimulationData(spec, train.texts, train.labels, None, held.texts, held.labels, None)

    def _newest_base(self) -> Path:
        for repository in self.repositories:
            try:
                return newest_bundle(repository, NAME)
            except NexusError:
                continue
        raise NexusError(
            f"no {NAME} bundle in {', '.join(str(r) for r in self.repositories)};"
            " run 'nexus models train emotion --tier accurate'"
        )
