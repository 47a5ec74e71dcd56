"""The edge's sync agent: enroll once, heartbeat, poll assignments with ETag, download
assigned bundles file by file, verify them against the pinned hub key, install them
atomically and ask the repository to serve them.

Nothing from the hub is trusted before it verifies: every answer is validated
(edge_worker/hub_answers.py), the assignment document must carry the pinned hub key's
signature for this node and be no older than the last one adopted, the manifest's signature
is checked before any artifact is fetched, every artifact's sha256 as it arrives, and
``install_bundle`` checks the whole bundle again before the atomic rename. Paths are built
only from validated names, and each is checked to stay inside the models or staging dir
before anything is written or removed there. A refused answer is logged, kept in the
state file (``rejected``) and the node serves on. A refused bundle is remembered (by its
archive digest) so a bad version is not fetched in a loop, and the model already served
keeps serving.

While the hub is unreachable the agent backs off exponentially with jitter; serving
never depends on it. Its state (ETag, assignments, what was applied, what was refused)
and half-downloaded bundles live in the data dir, so a restart resumes where it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_worker.audit import AuditError, TreeHead, verify
from edge_worker.egress import HeartbeatPayload, HubUnreachable
from edge_worker.hub_answers import BundleManifest, HeldHead, HubAnswerRefused, decode, validated
from edge_worker.hub_link import HubLink
from edge_worker.identity import NodeIdentity
from edge_worker.state import EdgeState
from models.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    in_package,
    install_bundle,
    sha256_file,
    verify_bundle,
    verify_signature,
)
from models.errors import NexusError
from nexus_service.keyfiles import write_private_json
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.names import MODEL_NAME, VERSION, fullmatch
from nexus_wire.signed_assignments import DIGEST, AssignmentDocument, ModelAssignment

log = logging.getLogger("nexus.edge.sync")
_META_MAX_BYTES = 1 << 20
#: refused hub answers kept in the state file, newest last
_REJECTED_KEPT = 20


@dataclass(frozen=True)
class NodeStatus:
    """What the heartbeat reports, read from the running node."""

    models: dict[str, str]
    health: str = "ok"
    request_rate: float = 0.0
    queue_depth: int = 0


@dataclass
class SyncState:
    etag: str | None = None
    #: model -> {"version", "archive_sha256", "archive_bytes"} of the last signed document adopted
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: {"node_id", "issued_at"} of that document: an older one is a replay and refused
    document: dict[str, Any] | None = None
    #: model -> version installed and handed to the repository
    applied: dict[str, str] = field(default_factory=dict)
    #: model -> {"version", "archive_sha256", "reason"} of the last refused bundle
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the last refused hub answers, {"answer", "reason", "at"}, newest last
    rejected: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SyncStats:
    cycles: int = 0
    sync_errors: int = 0
    consecutive_failures: int = 0
    installs: int = 0
    refusals: int = 0
    last_success_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class AuditCheck:
    """The verdict of the last full verification of the node's audit log."""

    ok: bool
    verified_at: float


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * 2^(n-1)`` capped, times a random 0.5..1."""

    base_s: float = 0.5
    max_s: float = 60.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return min(self.max_s, self.base_s * 2 ** max(failures - 1, 0)) * rng.uniform(0.5, 1.0)


class Refused(NexusError):
    """A bundle from the hub failed verification: never installed, old model kept."""


def inside(path: Path, root: Path) -> Path:
    """``path`` when it resolves to somewhere strictly below ``root``; a path the hub could
    have steered elsewhere (``..``, a link) is refused before anything writes or removes it."""
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise Refused(f"{path} is not inside {root}: refused to write or remove it")
    return path


def _verifies(bundle_dir: Path, key: Ed25519PublicKey) -> bool:
    try:
        verify_bundle(bundle_dir, key)
    except BundleError:
        return False
    return True


def _adopt(target: Path, staging: Path, key: Ed25519PublicKey) -> None:
    """A local copy of the hub's bundle without its signature (a shipped default bundle
    the operator also pushed): same manifest bytes, so the hub's signature covers it."""
    if (target / MANIFEST).read_bytes() != (staging / MANIFEST).read_bytes():
        raise Refused(
            f"{target} holds another bundle than the hub's version {target.name}; remove it to install the hub's"
        )
    verify_bundle(target)
    tmp = target / f".{SIGNATURE}.tmp"
    shutil.copyfile(staging / SIGNATURE, tmp)
    os.replace(tmp, target / SIGNATURE)
    verify_bundle(target, key)


def load_state(data_dir: EdgeDataDir) -> SyncState:
    try:
        raw = json.loads(data_dir.sync_state.read_text())
        return _checked(SyncState(**raw), data_dir)
    except FileNotFoundError:
        return SyncState()
    except (ValueError, TypeError, AttributeError) as exc:
        # Losing the state only costs a re-poll: the repository still holds the bundles.
        log.warning("ignoring corrupt %s (%s)", data_dir.sync_state.name, exc)
        return SyncState()


def _checked(state: SyncState, data_dir: EdgeDataDir) -> SyncState:
    """The state with every name, version and digest well formed: a file written before the
    hub's answers were validated may hold what they held, and these become paths."""
    assignments = {m: a for m, a in state.assignments.items() if fullmatch(MODEL_NAME, m) and _assignment_ok(a)}
    applied = {m: v for m, v in state.applied.items() if fullmatch(MODEL_NAME, m) and fullmatch(VERSION, v)}
    refused = {m: r for m, r in state.refused.items() if fullmatch(MODEL_NAME, m) and _refusal_ok(r)}
    if (assignments, applied, refused) == (state.assignments, state.applied, state.refused):
        return state
    log.warning("dropped malformed entries from %s", data_dir.sync_state.name)
    # without its ETag the next poll fetches the whole signed document again
    return replace(state, etag=None, document=None, assignments=assignments, applied=applied, refused=refused)


def _refusal_ok(refusal: Any) -> bool:
    return (
        isinstance(refusal, dict)
        and fullmatch(VERSION, refusal.get("version"))
        and fullmatch(DIGEST, refusal.get("archive_sha256"))
    )


def _assignment_ok(assignment: object) -> bool:
    try:
        ModelAssignment.model_validate(assignment)
    except ValueError:
        return False
    return True


class SyncAgent:
    def __init__(
        self,
        link: HubLink,
        repository_dir: Path,
        activate: Callable[[str, str], None],
        status: Callable[[], NodeStatus],
        enroll_token: str | None = None,
        models: Collection[str] | None = None,
        poll_interval_s: float | None = None,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        audit_verify_interval_s: float = 3600.0,
    ) -> None:
        """``activate(model, version)`` is blocking (called in a thread) and makes the
        repository serve exactly that version; ``models`` limits what this node takes."""
        self.link = link
        self.data_dir = link.data_dir
        self.repository_dir = Path(repository_dir)
        self.activate = activate
        self.status = status
        self.enroll_token = enroll_token
        self.models = set(models) if models is not None else None
        self._poll_override = poll_interval_s
        self.poll_interval_s = poll_interval_s or 5.0
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.state = load_state(self.data_dir)
        self.stats = SyncStats()
        #: model -> version this process's repository was told to serve
        self._activated: dict[str, str] = {}
        self.audit_verify_interval_s = audit_verify_interval_s
        #: heartbeats carry the last finished verification, None before the first one
        self.audit_check: AuditCheck | None = None
        #: the audit tree head the hub said it holds (its last heartbeat answer): the next proof's start
        self.hub_held: HeldHead | None = None
        self._audit_started_at: float | None = None
        self._audit_task: asyncio.Task[AuditCheck] | None = None

    # -- loop ------------------------------------------------------------------------------
    async def run(self, after_cycle: Callable[[SyncAgent], None] | None = None) -> None:
        """Until cancelled: restore what was applied, then sync on the poll interval.

        Several server processes of one node share its data dir: the node's leader
        (edge_worker/hub_link.py) talks to the hub; the others follow the state file it writes
        and switch their own repositories (a follower takes over if the leader dies).
        """
        await self.follow()
        try:
            await self._loop(after_cycle)
        finally:
            if self._audit_task is not None:
                self._audit_task.cancel()

    async def _loop(self, after_cycle: Callable[[SyncAgent], None] | None) -> None:
        while True:
            if self.link.lead():
                self._schedule_audit_verification()
                try:
                    await self.sync_once()
                    delay = self.poll_interval_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the agent must outlive any one failure
                    self._failed(exc)
                    delay = self.backoff.delay(self.stats.consecutive_failures, self.rng)
            else:
                await self.follow()
                delay = self.poll_interval_s
            if after_cycle is not None:
                after_cycle(self)
            await asyncio.sleep(delay)

    def _schedule_audit_verification(self) -> None:
        """Verify in the background at most every ``audit_verify_interval_s``: a sync never
        waits for it (only the leader does it; it is the one that heartbeats)."""
        if self._audit_task is not None and not self._audit_task.done():
            return
        if (
            self._audit_started_at is not None
            and time.monotonic() - self._audit_started_at < self.audit_verify_interval_s
        ):
            return
        self._audit_started_at = time.monotonic()
        self._audit_task = asyncio.create_task(self.verify_audit())

    async def verify_audit(self) -> AuditCheck:
        """Walk the whole audit log (linear in its size, so off the event loop) and keep
        the verdict for the following heartbeats."""
        try:
            result = await asyncio.to_thread(verify, self.data_dir.root)
            ok = result.ok
            if not ok:
                log.error("%s", result.message())
        except NexusError as exc:  # unreadable log or key: not intact as far as anyone can tell
            log.error("cannot verify the audit log: %s", exc)
            ok = False
        self.audit_check = AuditCheck(ok, time.time())
        return self.audit_check

    def _failed(self, exc: Exception) -> None:
        self.stats.sync_errors += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = str(exc)
        if isinstance(exc, HubAnswerRefused):
            pass  # logged and kept in the state file where it was refused
        elif isinstance(exc, HubUnreachable):
            log.warning(
                "hub unreachable (%d in a row), serving the last good models: %s", self.stats.consecutive_failures, exc
            )
        elif isinstance(exc, NexusError):
            log.error("sync failed: %s", exc)
        else:
            log.exception("sync failed unexpectedly")

    async def follow(self) -> None:
        """Serve what the state file says was applied: after a restart (before the hub is
        even reachable) and in follower processes."""
        self.state = load_state(self.data_dir)
        for model, version in sorted(self.state.applied.items()):
            if self._activated.get(model) != version and (self.repository_dir / model / version).is_dir():
                self._activated[model] = version  # tried once: a failure is logged, not repeated
                try:
                    await asyncio.to_thread(self.activate, model, version)
                except NexusError as exc:
                    log.error("cannot serve %s version %s: %s", model, version, exc)

    async def sync_once(self) -> dict[str, str]:
        """One cycle: enroll if needed, heartbeat, poll, apply. Returns model -> version applied now.
        An answer of the hub this node refuses ends the cycle (logged and kept in the state file)."""
        try:
            return await self._cycle()
        except HubAnswerRefused as exc:
            self._reject(exc)
            raise

    async def _cycle(self) -> dict[str, str]:
        self.stats.cycles += 1
        identity = await self._ensure_enrolled()
        status = self.status()
        entries, bytes_sent = await asyncio.to_thread(self.link.audit.totals)
        # the hub keeps the largest head it saw: a log cut back with its heads shows there
        head = await asyncio.to_thread(self.link.audit.tree_head)
        consistency = await asyncio.to_thread(self._consistency, head)
        check = self.audit_check
        reply = await self.link.gateway.heartbeat(
            HeartbeatPayload(
                models=status.models,
                health=status.health,
                request_rate=status.request_rate,
                queue_depth=status.queue_depth,
                bundle_refusals=len(self.state.refused),
                sync_errors=self.stats.sync_errors,
                bytes_sent=bytes_sent,
                audit_entries=entries,
                audit_ok=None if check is None else check.ok,
                audit_verified_at=None if check is None else check.verified_at,
                audit_head=None if head is None else asdict(head),
                audit_consistency=consistency,
            )
        )
        self.hub_held = reply.audit_held
        if self._poll_override is None and reply.poll_interval_s is not None:
            self.poll_interval_s = reply.poll_interval_s
        if await self.link.name_superlink(reply.superlink):
            log.info("the hub's Flower SuperLink is %s", self.link.superlink)
        polled = await self.link.gateway.poll_assignments(self.state.etag)
        if polled is not None:
            etag, document = polled
            self._fresh(document)
            self.state.assignments = {m: a.model_dump() for m, a in document.models.items() if self._wanted(m)}
            self.state.document = {"node_id": document.node_id, "issued_at": document.issued_at}
            self.state.etag = etag
            self._save()
        applied = await self._apply(identity)
        self.stats.consecutive_failures = 0
        self.stats.last_success_at = time.time()
        self.stats.last_error = None
        return applied

    def _consistency(self, head: TreeHead | None) -> dict[str, Any] | None:
        """The proof that ``head`` extends the head the hub holds; None when there is nothing
        to prove (no head yet, the hub holds none, or holds this size or more)."""
        held = self.hub_held
        if head is None or held is None or held.size >= head.size:
            return None
        try:
            proof = self.link.audit.consistency_proof(held.size, head.size)
        except AuditError as exc:
            log.error("cannot prove the audit log consistent with the head the hub holds: %s", exc)
            return None
        if proof.first.root != held.root:
            # sent all the same: the hub records the inconsistency, which is the point
            log.error(
                "the hub holds audit tree head size %d root %s…, this log's head of that size has root %s…: "
                "the log changed since the hub saw it",
                held.size,
                held.root[:12],
                proof.first.root[:12],
            )
        return {"first_size": held.size, "proof": proof.proof}

    def _wanted(self, model: str) -> bool:
        return self.models is None or model in self.models

    def _fresh(self, document: AssignmentDocument) -> None:
        """Refuse a signed document older than the one adopted last: a replay would roll the node back."""
        last = self.state.document
        if last is not None and last.get("node_id") == document.node_id and document.issued_at < last["issued_at"]:
            raise HubAnswerRefused(
                "assignments",
                f"issued at {document.issued_at}, before the document adopted last ({last['issued_at']}): a replay",
            )

    def _reject(self, exc: HubAnswerRefused) -> None:
        self.stats.refusals += 1
        rejected = {"answer": exc.answer, "reason": exc.reason, "at": time.time()}
        self.state.rejected = [*self.state.rejected, rejected][-_REJECTED_KEPT:]
        self._save()
        log.error("%s; nothing of it used, serving %s", exc, self.state.applied or "the local models")

    async def _ensure_enrolled(self) -> NodeIdentity:
        known = await self.link.reload_identity()  # a leader that died may have enrolled meanwhile
        if known is not None:
            return known
        if not self.enroll_token:
            raise NexusError("this node is not enrolled: start it once with --enroll-token")
        reply = await self.link.gateway.enroll(self.enroll_token)
        identity = NodeIdentity(reply.node_id, reply.node_secret, reply.public_key, dict(reply.tags))
        self.link.enrolled(identity)
        log.info("enrolled with %s as %s tags=%s", self.link.gateway.hub_url, identity.node_id, identity.tags)
        return identity

    # -- applying assignments --------------------------------------------------------------
    async def _apply(self, identity: NodeIdentity) -> dict[str, str]:
        applied: dict[str, str] = {}
        for model, assignment in sorted(self.state.assignments.items()):
            version, digest = str(assignment["version"]), str(assignment["archive_sha256"])
            if self.state.applied.get(model) == version:
                continue
            refused = self.state.refused.get(model)
            if refused and refused["version"] == version and refused["archive_sha256"] == digest:
                continue
            try:
                await self._install(identity, model, version, digest)
            except (Refused, BundleError, HubAnswerRefused) as exc:
                self._refuse(model, version, digest, str(exc))
                continue
            try:
                await asyncio.to_thread(self.activate, model, version)
            except NexusError as exc:  # verified but cannot be served here (the repository says why)
                self._refuse(model, version, digest, f"cannot serve it: {exc}")
                continue
            self._activated[model] = version
            self.state.applied[model] = version
            self.state.refused.pop(model, None)
            self.stats.installs += 1
            self._save()
            applied[model] = version
            log.info("now serving %s version %s from the hub", model, version)
        return applied

    async def _install(self, identity: NodeIdentity, model: str, version: str, digest: str) -> None:
        if in_package(self.repository_dir):
            # shared by every edge on the host (site-packages when installed): rollouts go to a folder of the node's own
            raise Refused(
                f"the model repository {self.repository_dir} is the package's shipped bundles: not written into; "
                "start the node without --models (its data dir's models folder) or with a --models of its own"
            )
        key = identity.public_key()
        target = inside(self.repository_dir / model / version, self.repository_dir)
        if target.is_dir() and await asyncio.to_thread(_verifies, target, key):
            return  # installed before (a rollback to it), and still intact and signed
        staging = self._staging(model, version, digest)
        staging.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, SIGNATURE):
            if not (staging / name).is_file():
                await self.link.gateway.download_file(model, version, name, staging / name, _META_MAX_BYTES)
        # The signature first: nothing the manifest says is believed before it verifies.
        verify_signature(staging, key)
        raw = decode("bundle manifest", (staging / MANIFEST).read_bytes())
        manifest = validated("bundle manifest", BundleManifest, raw)
        if manifest.name != model or manifest.version != version:
            raise Refused(f"hub sent {manifest.name} {manifest.version} for {model} {version}")
        if target.is_dir():
            await asyncio.to_thread(_adopt, target, staging, key)
        else:
            for name, entry in manifest.files.items():
                path = inside(staging / name, staging)
                if path.is_file() and path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256:
                    continue  # finished before an interruption
                got = await self.link.gateway.download_file(model, version, name, path, entry.bytes, entry.sha256)
                if got != entry.sha256:
                    raise Refused(f"{model} {version}: {name} sha256 mismatch (corrupt or tampered)")
            await asyncio.to_thread(install_bundle, staging, self.repository_dir, key)
        shutil.rmtree(staging, ignore_errors=True)

    def _refuse(self, model: str, version: str, digest: str, reason: str) -> None:
        self.stats.refusals += 1
        self.state.refused[model] = {"version": version, "archive_sha256": digest, "reason": reason}
        try:
            shutil.rmtree(self._staging(model, version, digest), ignore_errors=True)
        except Refused as exc:  # never: the names were validated, but a path outside is not removed
            log.error("%s", exc)
        self._save()
        log.error(
            "refused %s version %s from the hub, keeping %s: %s",
            model,
            version,
            self.state.applied.get(model, "the current model"),
            reason,
        )

    def _staging(self, model: str, version: str, digest: str) -> Path:
        """The staging folder of one bundle, named from the validated model, version and digest."""
        if not (fullmatch(MODEL_NAME, model) and fullmatch(VERSION, version) and fullmatch(DIGEST, digest)):
            raise Refused(f"no staging folder for a malformed assignment of {model!r:.80}")
        return inside(self.data_dir.staging / f"{model}-{version}-{digest[:16]}", self.data_dir.staging)

    def _save(self) -> None:
        write_private_json(self.data_dir.sync_state, asdict(self.state))


# -- the edge app's seam (edge_worker/app.py starts ``run(state, link)`` when hub_url is set) -

_METRICS = (
    ("nexus_edge_hub_sync_errors_total", "counter", "sync cycles that failed (hub unreachable, refused, ...)"),
    ("nexus_edge_hub_consecutive_failures", "gauge", "failed sync cycles in a row (0 when the hub answers)"),
    ("nexus_edge_hub_last_sync_timestamp_seconds", "gauge", "unix time of the last successful sync"),
    ("nexus_edge_hub_bundles_installed_total", "counter", "hub bundles verified, installed and served"),
    (
        "nexus_edge_hub_bundles_refused_total",
        "counter",
        "hub bundles refused (bad sha256 or signature); old model kept",
    ),
    ("nexus_edge_hub_refused_bundle_info", "gauge", "1 for each assigned model/version currently refused"),
)


async def run(state: EdgeState, link: HubLink) -> None:
    """The sync agent of a running edge node, exporting its state to ``/metrics``."""
    settings = state.settings
    token = settings.enroll_token or (
        settings.enroll_token_file.read_text().strip() if settings.enroll_token_file else None
    )
    metrics = state.metrics
    for name, kind, help_text in _METRICS:
        metrics.declare(name, kind, help_text)
    rate = _RequestRate(state)

    def status() -> NodeStatus:
        ready = state.repository.ready()
        return NodeStatus(
            models=state.served_versions(),
            health="ok" if ready else "starting",
            request_rate=rate.per_second(),
            queue_depth=state.queue_depth(),
        )

    def export(agent: SyncAgent) -> None:
        metrics.set("nexus_edge_hub_sync_errors_total", (), agent.stats.sync_errors)
        metrics.set("nexus_edge_hub_consecutive_failures", (), agent.stats.consecutive_failures)
        metrics.set("nexus_edge_hub_last_sync_timestamp_seconds", (), agent.stats.last_success_at or 0)
        metrics.set("nexus_edge_hub_bundles_installed_total", (), agent.stats.installs)
        metrics.set("nexus_edge_hub_bundles_refused_total", (), agent.stats.refusals)
        for model, refused in agent.state.refused.items():
            metrics.set("nexus_edge_hub_refused_bundle_info", (("model", model), ("version", refused["version"])), 1)

    agent = SyncAgent(
        link,
        settings.models_dir,
        state.repository.activate,
        status,
        enroll_token=token,
        models=settings.models,
        audit_verify_interval_s=settings.audit_verify_interval_s,
    )
    await agent.run(after_cycle=export)


class _RequestRate:
    """Items scored per second since the previous heartbeat, from the inference counters."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state
        self._last = (time.monotonic(), self._total())

    def _total(self) -> float:
        return sum(
            self.state.metrics.value("nexus_edge_inference_items_total", (("model", m),))
            for m in self.state.settings.models
        )

    def per_second(self) -> float:
        now, total = time.monotonic(), self._total()
        then, before = self._last
        self._last = (now, total)
        return max(total - before, 0.0) / max(now - then, 1e-9)
