"""The SuperExec that launches only the hub's apps: ``python -m federated.app_guard``.

A SuperNode (or SuperLink) started with ``--isolation process`` runs no app itself: it
queues a task per message, and whoever acquires the task over its Runtime API (``AcquireTask``,
signed with the ``--superexec-auth-secret-file`` secret, so only a holder of that secret
can) starts the app process with the task's token. Flower's own ``flower-superexec`` starts
whatever it acquires; this one first looks at the task's FAB digest (the sha256 of the FAB's
bytes, which is how Flower's state files the FAB the app process will pull) and launches the
task only when the hub's key signed that digest (nexus_wire/apps.py). Any other task is
finished as failed with a fixed reason before any of its code exists as a process, and on an
edge the refusal is an entry on the node's audit log (kind ``flower-app``: run, task, FAB
digest). Which key: on an edge the hub key pinned at enrollment, as the audit log records it
(``--edge-data-dir``); on the hub its own key (``--hub-key``). The signed statements are read
again for every task: the edge refreshes its copy while the guard runs.

Why not Flower's SuperNode ``--trusted-entities``: it verifies only FABs that carry the
Flower platform's verifications (``fab.verifications["valid_license"]``), which a FAB
submitted from a folder with ``flwr run`` never has, so it would refuse the hub's app too.

The loop is Flower's (flwr/supercore/superexec/run_superexec.py) with its task types and the
check added, and two changes for round latency: it polls every :data:`FAST_POLL_S` while a run
is sending tasks (Flower: every second), and a ClientApp task goes to a warm process that has
imported Flower and the app already and forks the task's process (federated/warm_app.py), which
runs Flower's own ClientApp runtime; a ServerApp is Flower's ``flwr-serverapp``, started by
Flower's executor. Both reach the Runtime API through a relay that waits out objects still on
their way instead of letting Flower back off a second (federated/runtime_relay.py). The app
processes exit when this process does.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PushTaskOutputRequest
from flwr.proto.task_pb2 import Task
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import register_signal_handlers
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import LaunchResultStatus
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.supercore.telemetry import EventType
from flwr.supercore.tls import validate_and_resolve_root_certificates
from pydantic import ValidationError

from edge_worker.audit import AuditLog
from federated.runtime_relay import Relay
from federated.warm_app import WarmExecutor
from nexus_service.keyfiles import load_public_key, public_key_from_b64
from nexus_wire.apps import FAB_SHA256, SignedApps
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import key_id
from nexus_wire.names import fullmatch
from nexus_wire.payloads import FLOWER_APP, FLOWER_CHANNEL

log = logging.getLogger("nexus.federated.guard")
#: the app kinds a guard may launch, by the name its command line gives
TASK_TYPES = {"clientapp": TaskType.CLIENT_APP, "serverapp": TaskType.SERVER_APP}
#: what the task's owner is told: fixed, so a refusal leaks nothing about the node
REFUSED = "refused by the node's app guard: the app is not signed by the hub"
#: seconds between two task polls while idle (Flower's own SuperExec: 1 s) ...
POLL_S = 0.5
#: ... and while a run is sending this node messages: within ACTIVE_S of the last task
FAST_POLL_S = 0.05
ACTIVE_S = 60.0
#: the one Runtime API call the SuperExec secret signs (flwr run_superexec._SUPEREXEC_AUTH_METHODS)
_SECRET_SIGNED = frozenset({"/flwr.proto.Runtime/AcquireTask"})
#: where a refusal entry says the app came from (the audit mod names the SuperLink so too)
SOURCE = "superlink"


def read_signed_apps(path: Path) -> SignedApps:
    """The statements in ``path``; none when it is missing or not one (the guard then runs nothing)."""
    try:
        return SignedApps.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return SignedApps()
    except (OSError, ValidationError) as exc:
        log.error("%s holds no valid app statements (%s): every app is refused", path, type(exc).__name__)
        return SignedApps()


class Guard:
    """The check in front of the launch: which task may run, and what a refusal leaves behind."""

    def __init__(
        self,
        task_type: TaskType,
        apps_file: Path,
        hub_key: Callable[[], Ed25519PublicKey | None],
        on_refusal: Callable[[Task, str], None] = lambda task, reason: None,
    ) -> None:
        self.task_type = task_type
        self.apps_file = apps_file
        self.hub_key = hub_key
        self.on_refusal = on_refusal

    def refusal(self, task: Task) -> str | None:
        """Why ``task`` must not run, or None when its FAB is one the hub key signed."""
        if task.type != self.task_type:
            return f"task type {task.type!r} is not run here"
        if not fullmatch(FAB_SHA256, task.fab_hash):
            return "the task names no FAB digest"
        key = self.hub_key()
        if key is None:
            return "no hub key is pinned yet"
        if task.fab_hash not in read_signed_apps(self.apps_file).digests(key):
            return f"FAB {task.fab_hash} is not signed by hub key {key_id(key)}"
        return None


def edge_guard(data_dir: Path) -> tuple[Guard, AuditLog]:
    """The edge's guard: the hub key its audit log pinned at enrollment, refusals logged there."""
    layout = EdgeDataDir(Path(data_dir))
    audit = AuditLog(layout.root)

    def hub_key() -> Ed25519PublicKey | None:
        pinned = audit.pinned_hub_key()
        return None if pinned is None else public_key_from_b64(pinned)

    def record(task: Task, reason: str) -> None:
        summary = {"run": int(task.run_id), "task": int(task.task_id), "fab_sha256": task.fab_hash, "app": task.type}
        audit.record_refusal(FLOWER_CHANNEL, SOURCE, FLOWER_APP, reason, summary=summary)

    return Guard(TaskType.CLIENT_APP, layout.trusted_apps, hub_key, record), audit


def hub_guard(apps_file: Path, hub_key_file: Path) -> Guard:
    """The hub's guard: its own key, read once (a hub does not change keys while it runs)."""
    key = load_public_key(hub_key_file)
    return Guard(TaskType.SERVER_APP, apps_file, lambda: key)


class Runtime:
    """The Runtime API of the SuperNode or SuperLink the guard serves, as Flower's SuperExec reaches it."""

    def __init__(self, address: str, root_certificates: Path | None, secret: bytes) -> None:
        self.address = address
        self.insecure = root_certificates is None
        self.root_certificates = None if root_certificates is None else str(root_certificates)
        self._certificates = validate_and_resolve_root_certificates(self.root_certificates, self.insecure)
        self.client = self._client(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=_SECRET_SIGNED))

    def _client(self, interceptor: Any) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=self._certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"), interceptor],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def acquire(self, task_type: TaskType) -> tuple[Task, str] | None:
        answer = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
        return (answer.task, answer.token) if answer.HasField("task") and answer.token else None

    def fail(self, token: str, details: str) -> None:
        """End a claimed task as failed, as an app process that raised would: it is not handed out again."""
        client = self._client(RuntimeTokenHttpInterceptor(token))
        try:
            client.PushTaskOutput(PushTaskOutputRequest(sub_status=SubStatus.FAILED, details=details))
        finally:
            client.close()


def serve(runtime: Runtime, guard: Guard, stop: Callable[[], bool] = lambda: False) -> None:
    """Flower's SuperExec loop, launching only what ``guard`` lets through (until ``stop()``):
    ClientApps through a warm process (federated/warm_app.py), others as Flower does; both
    reach a plain-HTTP Runtime API through the relay (federated/runtime_relay.py)."""
    relay = Relay(runtime.address).start() if runtime.insecure else None
    executor = WarmExecutor(relay=None if relay is None else relay.address, warm=guard.task_type == TaskType.CLIENT_APP)
    try:
        _loop(runtime, guard, executor, stop)
    finally:
        executor.close()
        if relay is not None:
            relay.stop()


def _loop(runtime: Runtime, guard: Guard, executor: WarmExecutor, stop: Callable[[], bool]) -> None:
    plugin = AutoExecPlugin(
        runtime_api_address=runtime.address,
        insecure=runtime.insecure,
        root_certificates_path=runtime.root_certificates,
        runtime_dependency_install=False,
        executor=executor,
    )
    last_task = float("-inf")
    while not stop():
        executor.reconcile()
        try:
            acquired = runtime.acquire(guard.task_type)
        except httpx.HTTPError as exc:  # the SuperNode/SuperLink restarting: Flower's client retried already
            log.warning("runtime API %s: %s", runtime.address, exc)
            acquired = None
        if acquired is not None:
            last_task = time.monotonic()
            task, token = acquired
            reason = guard.refusal(task)
            if reason is None:
                result = plugin.launch_task(token=token, task=task)
                if result.status != LaunchResultStatus.ACCEPTED:
                    log.error("launching task %d failed: %s", task.task_id, result.message)
            else:
                log.warning("refused task %d of run %d (FAB %s): %s", task.task_id, task.run_id, task.fab_hash, reason)
                guard.on_refusal(task, reason)  # on the log before Flower hears of it
                try:
                    runtime.fail(token, REFUSED)
                except httpx.HTTPError as exc:  # it expires instead and comes back: refused again
                    log.warning("could not end refused task %d: %s", task.task_id, exc)
        # a run's next message follows within seconds: poll fast then, gently when idle
        time.sleep(FAST_POLL_S if time.monotonic() - last_task < ACTIVE_S else POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federated.app_guard", description=__doc__.split("\n")[0])
    parser.add_argument("app", choices=sorted(TASK_TYPES), help="the app kind this guard launches")
    parser.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT")
    parser.add_argument("--superexec-auth-secret-file", required=True, type=Path)
    parser.add_argument("--root-certificates", type=Path, help="CA of the Runtime API's TLS (default: plain HTTP)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode/SuperLink) does")
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--edge-data-dir", type=Path, help="an edge: its pinned hub key, app list and audit log")
    trust.add_argument("--hub-key", type=Path, help="the hub: its signing key file (with --apps)")
    parser.add_argument("--apps", type=Path, help="the hub's signed app statements (with --hub-key)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise

    closers: list[Callable[[], None]] = []
    if args.edge_data_dir is not None:
        guard, audit = edge_guard(args.edge_data_dir)
        closers.append(audit.close)
    elif args.apps is None:
        parser.error("--hub-key needs --apps")
    else:
        guard = hub_guard(args.apps, args.hub_key)
    if guard.task_type != TASK_TYPES[args.app]:
        parser.error(f"--edge-data-dir guards a clientapp, --hub-key a serverapp, not a {args.app}")
    secret = load_superexec_auth_secret(str(args.superexec_auth_secret_file))
    assert secret is not None
    runtime = Runtime(args.runtime_api_address, args.root_certificates, secret)
    closers.append(runtime.client.close)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    register_signal_handlers(
        event_type=EventType.RUN_SUPEREXEC_LEAVE, exit_message="app guard stopped", exit_handlers=closers
    )
    log.info("app guard for %s tasks of %s", args.app, args.runtime_api_address)
    serve(runtime, guard)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
