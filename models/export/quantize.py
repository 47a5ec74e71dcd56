"""Symmetric per-row int8 quantisation shared by the ONNX and TFLite writers."""

from __future__ import annotations

import numpy as np


def quantize_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(q, scale)`` with ``q`` int8 [V, D], ``scale`` float32 [V] and
    ``q[v] * scale[v] ~= matrix[v]``.

    Symmetric (zero point 0) so a gathered row dequantises with one multiply, which the
    graphs fold into the bag weights.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"quantize_rows expects a 2-D matrix, got shape {matrix.shape}")
    peak = np.abs(matrix).max(axis=1)
    # An all-zero row quantises to zeros whatever its scale; 1 keeps the division finite.
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(matrix / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale
