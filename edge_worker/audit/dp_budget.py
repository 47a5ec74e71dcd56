"""Per-node differential-privacy budget: an RDP accountant for the Gaussian mechanism.

Bounds used (all standard, sensitivity 1 after clipping, noise std = sigma * clip):
- Gaussian mechanism: RDP(alpha) = alpha / (2 sigma^2) (Mironov 2017, Prop. 7).
- Poisson-subsampled with rate q < 1: the exact integer-order expression of Mironov,
  Talwar & Zhang 2019 (sec. 3.3), RDP(alpha) = log(sum_k C(alpha,k) (1-q)^(alpha-k) q^k
  exp((k^2-k)/(2 sigma^2))) / (alpha-1); at q = 1 it reduces to the line above.
- Rounds compose additively per order; RDP -> (epsilon, delta) with the conversion of
  Balle et al. 2020 (Thm. 21): eps = rdp + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1),
  minimised over integer orders 2..256 (and a few larger ones for large sigma).

State (accumulated RDP per order, history) is one JSON file in the data dir, updated
under a file lock, so the node's Flower ClientApp processes share one budget.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import NexusError
from nexus_service.keyfiles import write_private_json
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import utc_now

FORMAT = "nexus-dp-budget/1"
ORDERS = np.array([*range(2, 257), 384, 512, 1024], dtype=np.float64)
ACCOUNTANT = (
    "RDP of the (Poisson-subsampled) Gaussian mechanism, alpha/(2 sigma^2) at q=1 "
    "(Mironov 2017; integer orders for q<1, Mironov-Talwar-Zhang 2019), "
    "converted to (epsilon, delta) with Balle et al. 2020"
)
_HISTORY = 1000


class BudgetExhausted(NexusError):
    """Taking part would exceed this node's privacy budget."""


def gaussian_rdp(noise_multiplier: float, sample_rate: float = 1.0, orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of one application of the (subsampled) Gaussian mechanism at each order."""
    if noise_multiplier <= 0:
        return np.full(len(orders), math.inf)
    if not 0 < sample_rate <= 1:
        raise NexusError(f"sample rate must be in (0, 1], got {sample_rate}")
    if sample_rate == 1.0:
        return orders / (2 * noise_multiplier**2)
    log_q, log_1q = math.log(sample_rate), math.log1p(-sample_rate)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(orders.max()) + 1)))])
    out = np.empty(len(orders))
    for i, alpha in enumerate(orders.astype(int)):
        k = np.arange(alpha + 1)
        log_binom = log_fact[alpha] - log_fact[k] - log_fact[alpha - k]
        terms = log_binom + k * log_q + (alpha - k) * log_1q + (k * k - k) / (2 * noise_multiplier**2)
        top = terms.max()
        out[i] = (top + math.log(np.exp(terms - top).sum())) / (alpha - 1)
    return out


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> float:
    eps = rdp + np.log((orders - 1) / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return max(0.0, float(np.min(eps)))


class PrivacyBudget:
    """This node's (epsilon, delta) budget. ``epsilon=None`` keeps the stored limit (or none:
    spending is then only recorded); a given ``epsilon``/``delta`` replaces the stored one."""

    def __init__(self, data_dir: Path, epsilon: float | None = None, delta: float | None = None) -> None:
        layout = EdgeDataDir(Path(data_dir))
        self.path = layout.privacy_budget
        self._lock_path = layout.privacy_budget_lock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._load()
            if epsilon is not None:
                state["epsilon_budget"] = float(epsilon)
            if delta is not None:
                state["delta"] = float(delta)
            if not 0 < state["delta"] < 1:
                raise NexusError(f"delta must be in (0, 1), got {state['delta']}")
            if epsilon is not None or delta is not None or not self.path.exists():
                self._save(state)
        self._state = state

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """Whether the node in ``data_dir`` ever set up a budget (or spent some)."""
        return EdgeDataDir(Path(data_dir)).privacy_budget.exists()

    # -- queries

    @property
    def epsilon_budget(self) -> float | None:
        return self._state["epsilon_budget"]

    @property
    def delta(self) -> float:
        return self._state["delta"]

    @property
    def spent(self) -> float:
        return rdp_to_epsilon(np.array(self._state["rdp"]), self.delta)

    @property
    def remaining(self) -> float | None:
        return None if self.epsilon_budget is None else max(0.0, self.epsilon_budget - self.spent)

    def epsilon_after(self, noise_multiplier: float, rounds: int = 1, sample_rate: float = 1.0) -> float:
        rdp = np.array(self._state["rdp"]) + rounds * gaussian_rdp(noise_multiplier, sample_rate)
        return rdp_to_epsilon(rdp, self.delta)

    def can_spend(self, noise_multiplier: float, rounds: int = 1, sample_rate: float = 1.0) -> bool:
        self.refresh()
        return (
            self.epsilon_budget is None
            or self.epsilon_after(noise_multiplier, rounds, sample_rate) <= self.epsilon_budget
        )

    # -- spending

    def spend(self, noise_multiplier: float, rounds: int = 1, sample_rate: float = 1.0, label: str = "") -> float:
        """Record ``rounds`` releases; returns epsilon spent so far. Raises
        :class:`BudgetExhausted` (and records nothing) when the budget would be exceeded."""
        with self._locked():
            self._state = self._load()
            after = self.epsilon_after(noise_multiplier, rounds, sample_rate)
            if self.epsilon_budget is not None and after > self.epsilon_budget:
                raise BudgetExhausted(
                    f"privacy budget exhausted: epsilon would reach {after:.3f} > budget {self.epsilon_budget:g} "
                    f"(spent {self.spent:.3f}, delta {self.delta:g})"
                )
            rdp = np.array(self._state["rdp"]) + rounds * gaussian_rdp(noise_multiplier, sample_rate)
            self._state["rdp"] = rdp.tolist()
            self._state["rounds"] += rounds
            self._state["history"] = self._state["history"][-(_HISTORY - 1) :] + [
                {
                    "time": utc_now(),
                    "label": label,
                    "noise_multiplier": noise_multiplier,
                    "sample_rate": sample_rate,
                    "rounds": rounds,
                    "epsilon": after,
                }
            ]
            self._save(self._state)
        return after

    def refresh(self) -> None:
        with self._locked():
            self._state = self._load()

    def summary(self) -> dict[str, Any]:
        return {
            "accountant": ACCOUNTANT,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "epsilon_spent": self.spent,
            "epsilon_remaining": self.remaining,
            "rounds": self._state["rounds"],
            "history": self._state["history"][-20:],
        }

    # -- persistence

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {
                "format": FORMAT,
                "epsilon_budget": None,
                "delta": 1e-5,
                "orders": ORDERS.tolist(),
                "rdp": [0.0] * len(ORDERS),
                "rounds": 0,
                "history": [],
            }
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise NexusError(f"cannot read privacy budget {self.path} ({exc})") from None
        if state.get("format") != FORMAT or state.get("orders") != ORDERS.tolist():
            raise NexusError(f"{self.path} is not a {FORMAT} file for this accountant's orders")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_private_json(self.path, state)


def read_summary(data_dir: Path) -> dict[str, Any] | None:
    """The report's view: None when this node never set up a budget."""
    return PrivacyBudget(data_dir).summary() if PrivacyBudget.exists(data_dir) else None
