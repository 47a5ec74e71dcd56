"""Federated rounds on the hub: start runs on the Flower SuperLink, watch them, register the result.

The hub never imports ``federated/``: it submits the Flower app with a run config and
follows the run through the files the ServerApp writes into the hub's data dir
(``<rounds dir>/<run>/final.json``, rewritten after every round, then ``final.npz``;
with an external SuperLink that folder must be shared with it at the same path). A watcher
(:meth:`Rounds.tick`, every ``rounds_watch_interval_s``) copies each finished round into
the store, enforces the run's deadline (Flower waits without limit for ``min-nodes``),
notices a run Flower ended without a finished summary, and exports the final arrays as a
signed candidate version (:mod:`hub.round_export`). Everything the watcher needs lives in
the store and the data dir, so a restarted hub resumes watching; a run whose ServerApp
died with the old hub's SuperLink is marked failed with the reason.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hub import promotion_gate
from hub.apps import sign_apps, write_signed_apps
from hub.archive import unpack
from hub.registry import Conflict, NotFound, Registry
from hub.settings import HubSettings
from hub.store.base import ACTIVE_RUN_STATUSES, RunRecord, Store, VersionRecord
from hub.superlink import CONNECTION, FleetGateway, GatewayConfig, SuperLink, SuperLinkConfig, server_app_guard
from hub.superlink_keeper import SuperLinkKeeper, loopback_port
from models.errors import NexusError
from models.families import FAMILIES, Families
from nexus_wire.apps import SignedApps
from nexus_wire.datadir import HubDataDir, RunDir, SuperLinkDir
from nexus_wire.runconfig import RunConfig

log = logging.getLogger("nexus.hub.rounds")
#: seconds between asking Flower about a run (each ask is a ``flwr`` process)
STATUS_EVERY_S = 10.0


def connect(settings: HubSettings) -> SuperLink | None:
    """The SuperLink rounds run on: the hub's own child (not yet started) or an external one."""
    data_dir = HubDataDir(settings.data_dir)
    state_dir = data_dir.flower
    state_dir.mkdir(parents=True, exist_ok=True)
    if settings.superlink:
        host, _, port = settings.superlink.rpartition(":")
        if not host or not port.isdigit():
            raise NexusError(f"--superlink {settings.superlink!r} must look like HOST:PORT")
        link = SuperLink(SuperLinkConfig(state_dir, host=host, port=int(port)))
        _write_external_connection(link, settings.superlink_root_cert)
        return link
    if settings.superlink_port is not None:
        return SuperLink(
            SuperLinkConfig(
                state_dir,
                port=loopback_port(state_dir),
                tls=settings.superlink_tls(),
                supernode_auth=settings.superlink_supernode_auth,
                receipt_key=data_dir.signing_key,
            )
        )
    return None


def keeper(settings: HubSettings, link: SuperLink) -> SuperLinkKeeper:
    """The hub's own SuperLink with its app guard, behind its Fleet gateway on ``host:superlink_port``."""
    assert settings.superlink_port is not None
    admin_token = HubDataDir(settings.data_dir).admin_token
    gateway = FleetGateway(GatewayConfig(settings.host, settings.superlink_port, link.config, admin_token))
    return SuperLinkKeeper(link, server_app_guard(link), gateway)


def _write_external_connection(link: SuperLink, root_cert: Path | None) -> None:
    # SuperLink.write_connection knows the certificate only through a managed TLS triple
    lines = [f"[superlink.{CONNECTION}]", f'address = "{link.config.address}"']
    lines.append("insecure = true" if root_cert is None else f'root-certificates = "{Path(root_cert).resolve()}"')
    path = link.config.flwr_home / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_summary(path: Path) -> dict[str, Any]:
    """The ServerApp's run summary (written atomically), or an empty one before round 1."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"status": "pending", "rounds": []}
    except ValueError as exc:
        raise NexusError(f"run summary {path} is not JSON ({exc})") from None


def run_view(run: RunRecord) -> dict[str, Any]:
    return asdict(run)


class Rounds:
    def __init__(
        self,
        settings: HubSettings,
        store: Store,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        families: Families = FAMILIES,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.clock = clock
        #: the model families runs may train
        self.families = families
        self.link = connect(settings)
        self.keeper = keeper(settings, self.link) if self.link is not None and not settings.superlink else None
        #: the hub's signed statements of the apps it submits (made when rounds open)
        self.apps = SignedApps()
        # the watcher and API handlers run in worker threads: one read-modify-write at a time
        self._lock = threading.Lock()
        self._status_at: dict[str, float] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        if self.link is None:
            return
        # before the guard starts: it runs only what these name (an external SuperLink's guard
        # finds them in the same state dir)
        try:
            self.apps = sign_apps(self.registry.key)
        except NexusError as exc:  # no Flower app to sign: every guard refuses every run
            log.error("cannot sign the Flower app: %s", exc)
        write_signed_apps(SuperLinkDir(self.link.config.state_dir).trusted_apps, self.apps)
        if self.keeper is not None:
            self.keeper.open()
            log.info(
                "flower superlink on %s (loopback only; SuperNodes join through its Fleet gateway on %s), state in %s",
                self.keeper.link.config.address,
                self.settings.superlink_address(),
                self.keeper.link.config.state_dir,
            )

    def close(self) -> None:
        if self.keeper is None:
            return  # an external SuperLink keeps running the run; the next hub resumes watching
        self.keeper.close()
        # the run's ServerApp went down with our SuperLink: say so now rather than at the deadline
        for run in self.store.list_runs():
            if (
                run.status in ACTIVE_RUN_STATUSES
                and read_summary(RunDir(self.run_dir(run.run_id)).summary).get("status") != "finished"
            ):
                self._finish(
                    run,
                    "failed",
                    f"the hub stopped during round {run.rounds_done + 1}; its SuperLink took the run down",
                )

    def _require_link(self) -> SuperLink:
        if self.link is None:
            raise Conflict("federated rounds are off on this hub (start it with --superlink-port or --superlink)")
        return self.link

    def run_dir(self, run_id: str) -> Path:
        return self.settings.rounds_path() / run_id

    # -- operator actions ---------------------------------------------------------------------
    def start(self, config: RunConfig) -> RunRecord:
        link = self._require_link()
        run = self.prepare(config)
        folder = RunDir(self.run_dir(run.run_id))
        paths = {"base": str(folder.base), "output_path": str(folder.arrays)}
        try:
            signed = self.apps.apps[0].fab_sha256 if self.apps.apps else None
            flower_run_id = link.submit(config.model_copy(update=paths), signed_fab=signed)
        except NexusError as exc:
            self._finish(run, "failed", f"Flower refused the run: {exc}")
            raise
        log.info(
            "federated run %s (flower %s): %s x%d from version %s",
            run.run_id,
            flower_run_id,
            config.model,
            config.rounds,
            run.base_version,
        )
        with self._lock:
            current = self._get(run.run_id)
            ended = current.status not in ACTIVE_RUN_STATUSES
            run = replace(
                current,
                flower_run_id=flower_run_id,
                status=current.status if ended else "running",
                updated_at=self.clock(),
            )
            self.store.put_run(run)
        if ended:  # stopped, or past its deadline, while `flwr run` was submitting it: Flower must not go on
            self._stop_flower(run)
        return run

    def prepare(self, config: RunConfig) -> RunRecord:
        """Record a new run and unpack its base version into ``<rounds dir>/<run>/base``."""
        model = config.model
        if model not in self.families:
            raise NexusError(f"unknown model {model!r} (expected {' or '.join(self.families.names())})")
        base_version = self._base_version(model)
        run_id = "r-" + uuid.uuid4().hex[:12]
        folder = RunDir(self.run_dir(run_id))
        folder.base.mkdir(parents=True)
        archive = self.registry.read_archive(model, base_version)
        if archive is None:
            raise NotFound(f"no archive for {model} {base_version}")
        unpack(archive, folder.base)
        now = self.clock()
        run = RunRecord(
            run_id,
            model,
            "starting",
            config.api_view(),
            base_version,
            now,
            now,
            now + config.deadline_s,
            score_name=self.families.get(model).score_name,
        )
        self.store.put_run(run)
        return run

    def _base_version(self, model: str) -> str:
        """The stable version, else the newest: what the edges train from is what they serve."""
        summary = {m["model"]: m for m in self.registry.summary()}
        if model not in summary:
            raise Conflict(f"the registry has no {model} version to start from; push one with `nexus hub models push`")
        return summary[model]["stable"] or summary[model]["latest"]

    def stop(self, run_id: str) -> RunRecord:
        run = self._get(run_id)
        if run.status not in ACTIVE_RUN_STATUSES:
            raise Conflict(f"run {run_id} has already ended ({run.status})")
        return self._end(run, "stopped", "stopped by the operator")

    def _end(self, run: RunRecord, status: str, reason: str) -> RunRecord:
        """End a run here and in Flower. Recorded first: a start() still submitting it then
        stops Flower's run itself; from the stored record, which has the Flower id if it does not."""
        done = self._finish(run, status, reason)
        self._stop_flower(done)
        return done

    def _stop_flower(self, run: RunRecord) -> None:
        if run.flower_run_id is None or self.link is None:
            return
        try:
            self.link.stop_run(run.flower_run_id)
        except NexusError as exc:  # it may have just ended; the record still says who stopped it
            log.warning("flwr stop %s: %s", run.flower_run_id, exc)

    def _get(self, run_id: str) -> RunRecord:
        run = self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"unknown run {run_id!r}")
        return run

    def list(self) -> list[dict[str, Any]]:
        return [run_view(r) for r in reversed(self.store.list_runs())]

    def show(self, run_id: str) -> dict[str, Any]:
        run, rounds = self._get(run_id), self.store.list_rounds(run_id)
        # the candidate against the stable version it started from, on the last round's nodes
        return {**run_view(run), "rounds": rounds, "gate": promotion_gate.compare(rounds, run.base_version)}

    def _finish(self, run: RunRecord, status: str, reason: str | None, **fields: Any) -> RunRecord:
        with self._lock:
            current = self.store.get_run(run.run_id) or run
            if current.status not in ACTIVE_RUN_STATUSES:
                return current  # stopped or failed meanwhile: the first final word stays
            done = replace(current, status=status, reason=reason, updated_at=self.clock(), **fields)
            self.store.put_run(done)
            self._status_at.pop(run.run_id, None)
        (log.info if status == "finished" else log.warning)(
            "federated run %s %s%s", run.run_id, status, f": {reason}" if reason else ""
        )
        return done

    # -- the watcher --------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass over the active runs; never raises (a bad run must not stop the others)."""
        if self.keeper is not None:
            try:
                for name in self.keeper.supervise():
                    log.warning("the %s had died; restarted (the SuperLink on the same state db)", name)
            except NexusError as exc:
                log.error("flower superlink restart failed: %s", exc)
        for run in self.store.list_runs():
            if run.status not in ACTIVE_RUN_STATUSES:
                continue
            try:
                self.watch(run)
            except Exception as exc:
                log.exception("watching run %s failed", run.run_id)
                self._finish(run, "failed", f"the hub could not follow the run: {exc}")

    def watch(self, run: RunRecord) -> RunRecord:
        folder = RunDir(self.run_dir(run.run_id))
        summary = read_summary(folder.summary)
        run = self._copy_rounds(run, summary)
        if summary.get("status") == "finished" and folder.arrays.exists():
            return self._export(run, summary)
        if summary.get("status") == "failed":  # too few nodes trained: the ServerApp said why, nothing to register
            return self._finish(run, "failed", str(summary.get("reason") or "the ServerApp failed the run"))
        now = self.clock()
        if now > run.deadline_at:
            return self._end(
                run,
                "failed",
                f"deadline of {run.config['deadline_s']:.0f}s passed after "
                f"{run.rounds_done}/{run.config['rounds']} rounds{self._waiting_for()}",
            )
        if run.flower_run_id is None:
            if run.status == "starting" and now - run.created_at > 300:
                return self._finish(run, "failed", "the hub stopped before Flower accepted the run")
            return run
        if self.link is not None and now - self._status_at.get(run.run_id, 0.0) >= STATUS_EVERY_S:
            self._status_at[run.run_id] = now
            status = self.link.run_status(run.flower_run_id)
            if status.startswith("finished"):
                summary = read_summary(folder.summary)  # the last round may have landed meanwhile
                run = self._copy_rounds(run, summary)
                if summary.get("status") == "failed":
                    return self._finish(run, "failed", str(summary.get("reason") or "the ServerApp failed the run"))
                if summary.get("status") != "finished":
                    return self._finish(
                        run,
                        "failed",
                        f"Flower ended the run ({status}) after {run.rounds_done}/{run.config['rounds']} rounds; "
                        f"see `flwr log {run.flower_run_id}`",
                    )
        return run

    def _waiting_for(self) -> str:
        if self.link is None:
            return ""
        try:
            return f"; {len(self.link.online_nodes())} node(s) online"
        except NexusError:
            return ""

    def _copy_rounds(self, run: RunRecord, summary: dict[str, Any]) -> RunRecord:
        rounds = [r for r in summary.get("rounds", []) if int(r["round"]) > run.rounds_done]
        if not rounds:
            return run
        for r in rounds:
            self.store.put_round(run.run_id, int(r["round"]), r)
        with self._lock:
            current = self._get(run.run_id)
            seen = sorted(set(current.participants) | {str(n) for r in rounds for n in r.get("nodes", [])})
            run = replace(
                current,
                rounds_done=max(current.rounds_done, max(int(r["round"]) for r in rounds)),
                participants=seen,
                updated_at=self.clock(),
            )
            self.store.put_run(run)
        return run

    def _auto_promote(self, run: RunRecord, record: VersionRecord) -> str | None:
        """With ``--auto-promote``: promote the candidate when the gate found it better by the margin;
        what was decided, for the run's reason (None without the option)."""
        if not run.config.get("auto_promote"):
            return None
        gate = promotion_gate.gate_of(record.manifest)
        margin = float(run.config.get("promote_margin") or 0.0)
        if gate is None:
            return "not auto-promoted: no round compared the candidate with the stable version"
        compared = (
            f"{gate['candidate']:.4f} vs v{gate['baseline_version']} {gate['baseline']:.4f} ({gate['delta']:+.4f})"
        )
        if not promotion_gate.auto_promotes(gate, margin):
            return f"not auto-promoted: {compared}, needs +{margin:g}"
        try:
            self.registry.promote(record.model, record.version, "stable")
        except NexusError as exc:
            return f"not auto-promoted: {exc}"
        return f"auto-promoted to stable: {compared}"

    def _export(self, run: RunRecord, summary: dict[str, Any]) -> RunRecord:
        # the exporters import onnx (about a second): only a run that finished pays for it
        from hub.round_export import register_candidate

        with self._lock:
            current = self._get(run.run_id)
            if current.status not in ACTIVE_RUN_STATUSES:
                return current
            run = replace(current, status="exporting", updated_at=self.clock())
            self.store.put_run(run)
        folder = self.run_dir(run.run_id)
        try:
            record = register_candidate(
                self.registry, run, folder, summary, self.settings.eval_data.get(run.model), self.families
            )
        except NexusError as exc:
            return self._finish(run, "failed", f"export of the aggregated model failed: {exc}")
        shutil.rmtree(RunDir(folder).candidate, ignore_errors=True)
        return self._finish(
            run,
            "finished",
            self._auto_promote(run, record),
            version=record.version,
            participants=sorted(str(n) for n in summary.get("participants", run.participants)),
        )
