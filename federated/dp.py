"""Differential privacy of one node's update: Flower's fixed-clipping scheme, done on the node.

The update (returned weights minus the round's global weights) is clipped to L2 norm C and
Gaussian noise of std sigma*C is added to every weight. The plain path applies it to the reply
(federated/audit_mod.py); the secure path applies it before the update is masked
(federated/secure_aggregation.py), since masking must cover the noisy update.
"""

from __future__ import annotations

import math

import numpy as np

Delta = dict[str, np.ndarray]


def clip_and_noise(delta: Delta, clipping_norm: float, noise_multiplier: float, rng: np.random.Generator) -> Delta:
    """``delta`` scaled to L2 norm at most ``clipping_norm`` plus N(0, (sigma C)^2) per weight (float64)."""
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta.values()))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clipping_norm
    return {name: d.astype(np.float64) * scale + rng.normal(0.0, std, d.shape) for name, d in delta.items()}
