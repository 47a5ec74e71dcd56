"""Funnel sessions as tests make them (Online Shoppers' schema) and the CSV the trainers read."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from models.funnel.data import COLUMNS

MONTHS = ("Feb", "Mar", "May", "Nov", "Dec")


def synthetic_sessions(n: int, seed: int, region: int | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Online-Shoppers-shaped sessions whose purchase odds rise with PageValues and product pages."""
    rng = np.random.default_rng(seed)
    sessions, labels = [], []
    for _ in range(n):
        page_values = float(rng.exponential(8.0)) if rng.random() < 0.3 else 0.0
        products = int(rng.poisson(20))
        s = {
            "Administrative": int(rng.poisson(2)), "Administrative_Duration": float(rng.exponential(60)),
            "Informational": int(rng.poisson(0.5)), "Informational_Duration": float(rng.exponential(20)),
            "ProductRelated": products, "ProductRelated_Duration": float(products * rng.exponential(40)),
            "BounceRates": float(rng.uniform(0, 0.1)), "ExitRates": float(rng.uniform(0, 0.2)),
            "PageValues": page_values, "SpecialDay": 0.0,
            "Month": str(rng.choice(MONTHS)),
            "OperatingSystems": int(rng.integers(1, 4)), "Browser": int(rng.integers(1, 4)),
            "Region": int(region if region is not None else rng.integers(1, 4)), "TrafficType": int(rng.integers(1, 5)),
            "VisitorType": str(rng.choice(["Returning_Visitor", "New_Visitor"])), "Weekend": bool(rng.random() < 0.25),
        }  # fmt: skip
        logit = -2.5 + 0.25 * page_values + 0.02 * products - 10 * s["ExitRates"]
        labels.append(rng.random() < 1 / (1 + np.exp(-logit)))
        sessions.append(s)
    return sessions, np.asarray(labels, dtype=np.float32)


def write_csv(path: Path, sessions: list[dict], labels: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for s, y in zip(sessions, labels):
            row = [s[c] for c in COLUMNS[:-1]] + [bool(y)]
            writer.writerow(["TRUE" if v is True else "FALSE" if v is False else v for v in row])
    return path
