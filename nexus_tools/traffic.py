"""Traffic an app developer's shop would send to its edge nodes (``nexus demo`` drives it).

- Sessions shaped like Online Shoppers, with a purchase propensity that depends on the
  region, so each edge's local data differ the way real regions do; texts with their
  emotion labels from a small template grammar. Or, with a data folder, the shared data
  sets replayed: ``sessions.csv`` rows go to the edge of their ``Region`` modulo the
  number of edges, texts come from ``dev.tsv``.
- Visitors walking a funnel under a known truth per variant (what an experiment should
  find), through the edge's ``assign`` and ``events`` routes.
- :class:`Recorder` keeps what every call returned: status, latency, and the model version
  that answered, per edge.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.emotion.data import read_labels, read_tsv
from models.funnel.data import read_sessions

MONTHS = ("Feb", "Mar", "May", "June", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
VISITOR_TYPES = ("Returning_Visitor", "New_Visitor", "Other")
#: log-odds shift of buying per region: the regions' shoppers differ, so do the edges' data
REGION_SHIFT = {1: 0.5, 2: 0.0, 3: -0.5}

Example = tuple[str, list[str]]  # a text and its true emotion labels


@dataclass(frozen=True)
class Outcome:
    session: dict[str, Any]
    converted: bool


def synthetic_sessions(n: int, region: int, rng: np.random.Generator) -> list[Outcome]:
    """Sessions whose odds of buying rise with PageValues and product pages and shift by region."""
    out = []
    for _ in range(n):
        page_values = float(rng.exponential(12.0)) if rng.random() < 0.25 else 0.0
        products = int(rng.poisson(25))
        exit_rate = float(rng.beta(2, 40))
        session = {
            "Administrative": int(rng.poisson(2)), "Administrative_Duration": float(rng.exponential(70)),
            "Informational": int(rng.poisson(0.5)), "Informational_Duration": float(rng.exponential(25)),
            "ProductRelated": products, "ProductRelated_Duration": float(products * rng.exponential(38)),
            "BounceRates": float(exit_rate * rng.uniform(0.2, 0.9)), "ExitRates": exit_rate,
            "PageValues": page_values, "SpecialDay": float(rng.choice([0.0, 0.0, 0.0, 0.4, 0.8])),
            "Month": str(rng.choice(MONTHS)), "OperatingSystems": int(rng.choice([1, 2, 2, 3])),
            "Browser": int(rng.choice([1, 2, 2, 4])),
            "Region": region, "TrafficType": int(rng.integers(1, 9)),
            "VisitorType": str(rng.choice(VISITOR_TYPES, p=[0.85, 0.14, 0.01])), "Weekend": bool(rng.random() < 0.23),
        }  # fmt: skip
        logit = -2.0 + REGION_SHIFT.get(region, 0.0) + 0.12 * page_values + 0.015 * products - 25.0 * exit_rate
        out.append(Outcome(session, bool(rng.random() < 1.0 / (1.0 + np.exp(-logit)))))
    return out


# A tiny grammar: a text is an opener, a subject and a closer of one emotion.
_GRAMMAR: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "joy": (
        ("I love", "So happy with", "Thank you for", "Really enjoying"),
        ("my new shoes", "the fast delivery", "this jacket", "the gift box"),
        ("!", ", made my day!", ", thanks so much.", " :)"),
    ),
    "anger": (
        ("I am furious about", "This is outrageous:", "Fed up with", "So angry about"),
        ("the late parcel", "your support team", "the wrong size again", "the hidden fees"),
        ("!", ". Unacceptable.", ", fix it now.", "!!"),
    ),
    "sadness": (
        ("I'm so sad about", "Disappointed by", "Heartbroken that I lost", "Feeling down about"),
        ("the cancelled order", "my favourite mug", "the sold-out dress", "the broken lamp"),
        (".", " :(", ", what a pity.", "..."),
    ),
    "fear": (
        ("I'm worried about", "Scared that", "Nervous about", "Afraid of"),
        ("my card details", "the parcel getting lost", "the size not fitting", "a scam"),
        (".", "...", ", please help.", "?"),
    ),
    "surprise": (
        ("Wow, I didn't expect", "What a surprise:", "I can't believe", "No way,"),
        ("the free upgrade", "it arrived today", "the discount", "two gifts in the box"),
        ("!", "?!", ", wow.", "!"),
    ),
    "disgust": (
        ("Gross,", "Disgusting:", "Yuck,", "Revolting,"),
        ("the food smelled rotten", "the shirt was stained", "the box was full of hair", "the seller's reply"),
        (".", "!", ", never again.", ". Eww."),
    ),
    "neutral": (
        ("Where is", "Can you update", "Please send", "What is the status of"),
        ("my order", "the invoice", "the tracking number", "the return label"),
        ("?", ".", ", thanks.", " please."),
    ),
}


def grammar_texts(n: int, labels: list[str], rng: np.random.Generator) -> list[Example]:
    """``n`` texts of the grammar's emotions that the model knows, each with its true label."""
    usable = [label for label in _GRAMMAR if label in labels]
    out = []
    for _ in range(n):
        label = usable[int(rng.integers(len(usable)))]
        opener, subject, closer = (parts[int(rng.integers(len(parts)))] for parts in _GRAMMAR[label])
        out.append((f"{opener} {subject}{closer}", [label]))
    return out


def replay_sessions(data_dir: Path, n_edges: int, per_edge: int, rng: np.random.Generator) -> list[list[Outcome]]:
    """``per_edge`` rows of ``online-shoppers/sessions.csv`` per edge, routed by ``Region`` modulo ``n_edges``."""
    data = read_sessions(data_dir / "online-shoppers")
    routed: list[list[Outcome]] = [[] for _ in range(n_edges)]
    for i in rng.permutation(len(data.sessions)):
        session = data.sessions[int(i)]
        bucket = routed[int(session["Region"]) % n_edges]
        if len(bucket) < per_edge:
            bucket.append(Outcome(session, bool(data.labels[int(i)])))
    return routed


def replay_texts(data_dir: Path, n: int, rng: np.random.Generator) -> list[Example]:
    """``n`` random rows of ``goemotions-ekman/dev.tsv`` with their label names."""
    folder = data_dir / "goemotions-ekman"
    names = read_labels(folder / "labels.txt")
    data = read_tsv(folder / "dev.tsv", len(names))
    picked = rng.choice(len(data.texts), size=min(n, len(data.texts)), replace=False)
    return [(data.texts[int(i)], [names[j] for j in np.flatnonzero(data.labels[int(i)])]) for i in picked]


# -- what the edges answered ----------------------------------------------------------------


@dataclass
class Recorder:
    """Every call's route, status and latency; which model version answered, per edge."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    served: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (edge, model, version)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, http: httpx.Client, edge: str, route: str, path: str, body: dict[str, Any]) -> httpx.Response:
        start = time.perf_counter()
        response = http.post(path, json=body)
        elapsed = 1000.0 * (time.perf_counter() - start)
        with self._lock:
            self.latencies_ms[route].append(elapsed)
            if response.status_code >= 400:
                self.errors[route] += 1
            elif response.headers.get("content-type", "").startswith("application/json"):
                answer = response.json()
                if "model_version" in answer:
                    self.served[(edge, answer["model"], answer["model_version"])] += 1
        return response

    def summary(self) -> dict[str, Any]:
        with self._lock:
            routes = {
                route: {
                    "requests": len(ms),
                    "errors": self.errors[route],
                    "p50_ms": round(float(np.median(ms)), 2),
                    "p99_ms": round(float(np.percentile(ms, 99)), 2),
                }
                for route, ms in sorted(self.latencies_ms.items())
            }
            total = sum(len(ms) for ms in self.latencies_ms.values())
            every = [x for ms in self.latencies_ms.values() for x in ms]
        return {
            "requests": total,
            "errors": sum(r["errors"] for r in routes.values()),
            "p50_ms": round(float(np.median(every)), 2) if every else None,
            "routes": routes,
        }


# -- visitors through a funnel ----------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """Per variant, the probability of reaching each step after the first, given the one before it."""

    steps: tuple[str, ...]
    rates: dict[str, tuple[float, ...]]


@dataclass
class Tally:
    """What the visitors did, as the edges counted it: the figures the hub must report."""

    assigned: Counter[str] = field(default_factory=Counter)
    reached: Counter[tuple[str, str]] = field(default_factory=Counter)  # (variant, step)

    def merge(self, other: Tally) -> None:
        self.assigned.update(other.assigned)
        self.reached.update(other.reached)


def walk_visitors(
    recorder: Recorder,
    http: httpx.Client,
    edge: str,
    funnel: str,
    visitors: list[str],
    truth: Truth,
    seed: int,
    stop: threading.Event,
) -> Tally:
    """Each visitor is assigned a variant by the edge, then walks the funnel under ``truth``."""
    tally = Tally()
    rng = np.random.default_rng(seed)
    for visitor in visitors:
        if stop.is_set():
            break
        reply = recorder.call(http, edge, "funnel assign", f"/v1/funnels/{funnel}/assign", {"visitor_id": visitor})
        reply.raise_for_status()
        variant = reply.json()["variant"]
        if variant is None:  # the edge has no running experiment for this funnel (yet)
            continue
        tally.assigned[variant] += 1
        for step, rate in zip(truth.steps, (1.0, *truth.rates[variant])):
            if rng.random() >= rate:
                break
            event = recorder.call(
                http, edge, "funnel event", f"/v1/funnels/{funnel}/events", {"visitor_id": visitor, "step": step}
            )
            event.raise_for_status()
            if event.json()["counted"]:
                tally.reached[(variant, step)] += 1
    return tally
