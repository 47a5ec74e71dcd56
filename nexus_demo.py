"""``nexus demo``: start the system on loopback and show real calls and answers.

First version: one edge node with the shipped bundles. Each node is a child process
started by :class:`edge_worker.server.ServerProcess` inside one ``ExitStack``, so adding
the hub and more edges is adding entries to :func:`_start_nodes`; every node stops
cleanly on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from edge_worker.server import ServerProcess, edge_argv, free_port

TEXTS = [
    "Thank you so much, the delivery was faster than I hoped!",
    "This is the third time my order is late. I am furious.",
    "I'm a bit worried the size won't fit.",
]
SESSION = {
    "Administrative": 3, "Administrative_Duration": 80.0, "Informational": 1, "Informational_Duration": 12.0,
    "ProductRelated": 24, "ProductRelated_Duration": 910.5, "BounceRates": 0.003, "ExitRates": 0.015,
    "PageValues": 28.4, "SpecialDay": 0.0, "Month": "Nov", "OperatingSystems": 2, "Browser": 2,
    "Region": 1, "TrafficType": 2, "VisitorType": "Returning_Visitor", "Weekend": False,
}


@dataclass
class Nodes:
    edges: list[ServerProcess]


def _start_nodes(stack: contextlib.ExitStack, workdir: Path, models_dir: Path | None) -> Nodes:
    port = free_port()
    edge = ServerProcess("edge", edge_argv(port, models_dir=models_dir, data_dir=workdir / "edge-1"), port)
    return Nodes(edges=[stack.enter_context(edge)])


class Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def section(self, title: str) -> None:
        print(f"\n== {title}", file=self.out)

    def call(self, client: httpx.Client, method: str, path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
        shown = raw.decode(errors="replace") if raw is not None else json.dumps(body) if body is not None else ""
        # Long bodies keep their end, where the interesting field usually is.
        shown = shown if len(shown) <= 160 else shown[:80] + " ... " + shown[-70:]
        print(f"-> {method} {path} {shown}", file=self.out)
        if raw is not None:
            response = client.request(method, path, content=raw, headers={"content-type": "application/json"})
        else:
            response = client.request(method, path, json=body)
        print(f"<- {response.status_code} {response.text[:400]}", file=self.out)
        return response


def _show_edge(console: Console, edge: ServerProcess) -> None:
    with httpx.Client(base_url=edge.url, timeout=10.0) as client:
        console.section(f"edge node on {edge.url}")
        console.call(client, "GET", "/v2/health/ready")

        console.section("emotion of a few texts")
        answer = console.call(client, "POST", "/v1/emotion", {"texts": TEXTS}).json()
        for text, result in zip(TEXTS, answer.get("results", [])):
            labels = ", ".join(result["labels"]) or "-"
            print(f"   {result['top']:>9}  [{labels}]  {text}", file=console.out)

        console.section("purchase probability of a session")
        answer = console.call(client, "POST", "/v1/funnel/score", {"session": SESSION}).json()
        if "probabilities" in answer:
            print(f"   P(purchase) = {answer['probabilities'][0]:.3f} (funnel model version {answer['model_version']})", file=console.out)

        console.section("Open Inference Protocol v2")
        console.call(client, "GET", "/v2/models/emotion")
        console.call(client, "POST", "/v2/models/emotion/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]})

        console.section("bad requests get a 4xx naming the problem")
        console.call(client, "POST", "/v1/emotion", {"texts": []})
        console.call(client, "POST", "/v1/funnel/score", {"sessions": [{**SESSION, "BounceRates": "high"}]})
        console.call(client, "POST", "/v1/emotion", raw=b"{not json")
        console.call(client, "GET", "/v2/models/churn")


def run_demo(out: TextIO = sys.stdout, models_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="nexus-demo-") as tmp, contextlib.ExitStack() as stack:
        print("starting an edge node on loopback ...", file=out, flush=True)
        nodes = _start_nodes(stack, Path(tmp), models_dir)
        console = Console(out)
        for edge in nodes.edges:
            _show_edge(console, edge)
        print("\nstopping ...", file=out, flush=True)
    print("done.", file=out)


def _run(args: argparse.Namespace) -> int:
    run_demo(models_dir=args.models)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="start the system on loopback and show real calls")
    demo.add_argument("--models", type=Path, help="model repository (default: the shipped bundles)")
    demo.set_defaults(func=_run)
