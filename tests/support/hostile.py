"""A real edge under a hostile hub, what it must leave untouched, and the hostile values
(hypothesis strategies) the fuzz tests answer with (no tests here)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from starlette.applications import Starlette

from edge_worker.app import create_app
from edge_worker.hub_answers import HubAnswerRefused
from edge_worker.hub_link import HubLink
from edge_worker.sync import Backoff, NodeStatus, SyncAgent, load_state
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerThread
from nexus_wire.datadir import EdgeDataDir
from tests.support.edge import BUNDLES, edge_settings, newest
from tests.support.fake_hub import TOKEN, FakeHub

#: the loggers a refusal of a hub answer goes to
LOGGERS = ("nexus.edge.sync", "nexus.edge.funnels")
#: files of the data dir nothing the hub says may change (the log and the sync state may grow)
PRECIOUS = ("identity", "audit_key", "audit_salt", "operator_token")

#: the issue's attacks and their relatives: each one, as a path part, leaves its folder
TRAVERSALS = (
    "/../../../victim",
    "/../..",
    "..",
    "../..",
    "../../victim",
    "../../../../../../../../etc/passwd",
    "/",
    "/etc/passwd",
    "/tmp/victim",
    "a/../../b",
    ".",
    "",
    "..\\..\\victim",
    "%2e%2e%2f%2e%2e%2f",
    "~",
    "funnel/../../victim",
    "\x00",
    "1\x00",
    "./1",
    "1/..",
    " 1",
    "1\n",
    "A" * 64,
    "0" * 63,
    "0" * 65,
    "x" * 10_000,
)

_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)
#: every JSON type but strings, numbers bounded so they stay exact
NOT_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def bad_keys(pattern: str) -> st.SearchStrategy[str]:
    """Strings that are not ``pattern``, for the keys of a JSON object (always strings)."""
    return st.one_of(
        st.sampled_from(TRAVERSALS),
        st.from_regex(r"(\.\./|/\.\.){1,6}[a-z]{0,8}", fullmatch=True),
        _TEXT,
    ).filter(lambda s: re.fullmatch(pattern, s) is None)


def bad_strings(pattern: str) -> st.SearchStrategy[Any]:
    """Strings that are not ``pattern`` (traversals first), or any other JSON type."""
    return st.one_of(bad_keys(pattern), NOT_STRINGS)


def bad_ints(low: int, high: int) -> st.SearchStrategy[Any]:
    """Anything but an integer in [low, high]: out of range, absurd, or not an integer at all."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.sampled_from([2**63, 2**80, -(2**63)]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.none(),
        st.booleans(),
        _TEXT,
        st.lists(st.integers(), max_size=2),
    )


def bad_numbers(low: float, high: float) -> st.SearchStrategy[Any]:
    """Anything but a number in [low, high]."""
    outside = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not low <= x <= high)
    return st.one_of(
        outside,
        st.sampled_from([1e308, -1e308, 10**30]),
        st.none(),
        st.booleans(),
        _TEXT,
        st.lists(st.integers(), max_size=2),
    )


def mutated(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with the member at ``path`` set to ``value``; a path ending
    in ``("<key>",)`` renames the key of the mapping it names instead."""
    out = copy.deepcopy(document)
    *parents, last = path
    node: Any = out
    for part in parents:
        node = node[part]
    if last == "<key>":
        assert isinstance(node, dict) and len(node) >= 1
        assert isinstance(value, str), "a JSON key is a string"
        node[value] = node.pop(next(iter(node)))
    else:
        node[last] = value
    return out


def tree(root: Path, skip: Collection[Path] = ()) -> dict[str, str]:
    """Every path under ``root`` (but ``skip``): "dir" or the sha256 of the file."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        out[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Errors(logging.Handler):
    """The messages of the error records of :data:`LOGGERS`, in order."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Snapshot:
    outside: dict[str, str]
    models: dict[str, str]
    precious: dict[str, str]
    data_files: set[str]


class EdgeUnderAttack:
    """A real edge node (its app under uvicorn on 127.0.0.1, serving the funnel model) whose
    sync agent talks to ``hub``. Around it: sentinel folders where the known traversals point."""

    def __init__(self, root: Path, hub: FakeHub) -> None:
        self.root = root  # everything under it but the models and data dirs must stay as it is
        self.hub = hub
        node = root / "edge"
        self.models_dir = node / "models"
        version = newest("funnel")
        shutil.copytree(BUNDLES / "funnel" / version, self.models_dir / "funnel" / version)
        self.settings = edge_settings(node, self.models_dir, models=("funnel",))
        self.layout = EdgeDataDir(self.settings.data_dir)
        for victim in (node / "victim", root / "victim"):  # "/../../../victim" from the staging dir, and one more up
            victim.mkdir(parents=True)
            (victim / "precious.txt").write_text("not the hub's to touch\n")
        self.app: Starlette = create_app(self.settings)
        self.server = ServerThread(self.app).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        self.loop = asyncio.new_event_loop()
        self.errors = Errors()
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.errors)
        self.agent = self.new_agent()

    def new_agent(self) -> SyncAgent:
        """The sync agent of this node (a fresh one reads its state back from the data dir)."""
        edge = self.app.state.edge
        return SyncAgent(
            HubLink.open(self.hub.url, self.settings.data_dir, timeout=5.0),
            self.models_dir,
            edge.repository.activate,
            lambda: NodeStatus(models=edge.served_versions()),
            enroll_token=TOKEN,
            backoff=Backoff(0.01, 0.02),
        )

    def sync(self, agent: SyncAgent | None = None) -> dict[str, str]:
        return self.loop.run_until_complete((agent or self.agent).sync_once())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.errors)
        self.run(self.agent.link.aclose())
        self.loop.close()
        self.http.close()
        self.server.stop()

    # -- what must hold ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        data = self.layout.root
        return Snapshot(
            outside=tree(self.root, skip=(data, self.models_dir)),
            models=tree(self.models_dir),
            precious={name: hashlib.sha256(getattr(self.layout, name).read_bytes()).hexdigest() for name in PRECIOUS},
            data_files={str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()},
        )

    def assert_untouched(self, before: Snapshot, models_may_change: bool = False) -> None:
        after = self.snapshot()
        assert after.outside == before.outside, "a path outside the node's models and data dirs changed"
        if not models_may_change:
            assert after.models == before.models
        assert after.precious == before.precious
        assert before.data_files <= after.data_files, f"data dir lost {sorted(before.data_files - after.data_files)}"
        unnamed = [p for p in self.layout.root.rglob("*") if p.is_file() and not self.layout.names(p)]
        assert unnamed == []
        assert not self.layout.staging.exists() or not any(self.layout.staging.iterdir()), "staging left behind"

    def assert_serving(self, version: str | None = None) -> None:
        """The node answers readiness and an inference request (with ``version`` when given)."""
        assert self.http.get("/v2/health/ready").status_code == 200
        scored = self.http.post("/v1/funnel/score", json={"sessions": [SESSION]})
        assert scored.status_code == 200, scored.text
        if version is not None:
            assert scored.json()["model_version"] == version

    def refuses(self, sync: Callable[[], Awaitable[Any]] | None = None) -> HubAnswerRefused:
        """Run one sync (the model sync agent's unless ``sync`` is given) and check the hub's
        answer was refused, the refusal logged and, for model sync, kept in the state file."""
        logged = len(self.errors.messages)
        with pytest.raises(HubAnswerRefused) as caught:
            self.run((sync or self.agent.sync_once)())
        refused = caught.value
        assert len(self.errors.messages) == logged + 1 and str(refused) in self.errors.messages[-1]
        if sync is None:
            assert self.rejected()[-1]["reason"] == refused.reason
        return refused

    def refuses_bundle(self, digest: str) -> str:
        """Run one sync and check the assigned bundle ``digest`` was refused and the refusal
        logged and kept; returns the reason."""
        logged = len(self.errors.messages)
        assert self.sync() == {}
        refused = load_state(self.layout).refused["funnel"]
        assert refused["archive_sha256"] == digest
        assert len(self.errors.messages) == logged + 1 and refused["reason"] in self.errors.messages[-1]
        return refused["reason"]

    def rejected(self) -> list[dict[str, Any]]:
        """The refused hub answers as the state file on disk records them."""
        return load_state(self.layout).rejected


@contextmanager
def edge_under_attack(root: Path) -> Iterator[EdgeUnderAttack]:
    """A fake hub and an enrolled edge that adopted the hub's first (empty) signed document."""
    hub = FakeHub()
    node = EdgeUnderAttack(root, hub)
    try:
        assert node.sync() == {}
        assert node.agent.state.document is not None
        yield node
    finally:
        node.close()
        hub.stop()
