"""Warm ClientApp launches: a process that has imported Flower and the app forks one child per task.

Flower's SuperExec starts ``flwr-clientapp`` for every message a SuperNode receives, and
that process spends about a second and a half importing Flower and the app before it runs
a millisecond of training; a round of train + evaluate pays it twice. The app guard
(federated/app_guard.py) instead hands each task it let through to a *warm* process,
``python -m federated.warm_app``, that imported Flower's ClientApp runtime and the
:data:`PRELOAD` modules once, and forks a child per task. The child runs exactly what
``flwr-clientapp --token ...`` runs (``flwr.supernode.runtime.run_clientapp``: pull the
task's message, context and FAB from the SuperNode, load the FAB's ClientApp, reply, push the
task's status) and exits; the warm process never runs app code itself and never talks to
the SuperNode. The check stays where it was: only a task whose FAB the hub signed reaches it.
Apps reach a plain-HTTP Runtime API through the guard's relay (federated/runtime_relay.py).

:class:`WarmExecutor` is Flower's executor interface (``flwr.supercore.superexec.executor``)
in front of it; a task of any other kind, or a warm process that is gone, falls back to
Flower's own :class:`SubprocessExecutor`. The token travels on the warm process's stdin,
one JSON line per task (Flower's executor puts it on the app's command line).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import IO, Any

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor

log = logging.getLogger("nexus.federated.warm")
MODULE = "federated.warm_app"
#: what a warm process imports before its first task: Flower's ClientApp runtime and our app
PRELOAD = ("flwr.supernode.runtime.run_clientapp", "federated.client_app")


class WarmExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks to the warm process, the rest as Flower does."""

    def __init__(
        self,
        preload: Sequence[str] = PRELOAD,
        cold: SubprocessExecutor | None = None,
        relay: str | None = None,
        warm: bool = True,
    ) -> None:
        self.preload = tuple(preload)
        #: where the apps reach a plain-HTTP Runtime API: the guard's relay (federated/runtime_relay.py)
        self.relay = relay
        #: False: every task cold, as Flower launches it (the hub's guard: a ServerApp per run)
        self.warm = warm
        self.cold = cold or SubprocessExecutor()
        self.process: subprocess.Popen[bytes] | None = None
        self.warm_launches = 0
        self.cold_launches = 0

    def _warm(self) -> subprocess.Popen[bytes] | None:
        if self.process is not None and self.process.poll() is None:
            return self.process
        if self.process is not None:
            log.warning("the warm ClientApp process exited (code %s); starting another", self.process.returncode)
        argv = [sys.executable, "-m", MODULE, *(f"--preload={m}" for m in self.preload)]
        try:
            # stdout/stderr: the guard's own (its log), as Flower's executor leaves a ClientApp's
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE)
        except OSError as exc:
            log.error("cannot start the warm ClientApp process: %s", exc)
            self.process = None
        return self.process

    def get_eligible_capacity(
        self, supported_task_types: set[TaskType], *, insecure: bool = False, root_certificates_path: str | None = None
    ) -> tuple[set[TaskType], set[str]]:
        return self.cold.get_eligible_capacity(
            supported_task_types, insecure=insecure, root_certificates_path=root_certificates_path
        )

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        self.cold.wait_for_capacity(
            task_type, fab_hash=fab_hash, insecure=insecure, root_certificates_path=root_certificates_path
        )

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if self.relay is not None and spec.insecure:
            spec = dataclasses.replace(spec, runtime_api_address=self.relay)
        if not self.warm or spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
            self.cold_launches += 1
            return self.cold.launch(spec)
        process = self._warm()
        if process is not None and process.stdin is not None:
            order = {
                "token": spec.token,
                "runtime_api_address": spec.runtime_api_address,
                "insecure": spec.insecure,
                "root_certificates": spec.root_certificates_path,
                "parent_pid": spec.parent_pid,
            }
            try:
                process.stdin.write(json.dumps(order).encode() + b"\n")
                process.stdin.flush()
                self.warm_launches += 1
                return LaunchResult.accepted()
            except OSError as exc:  # it died between the check and the write
                log.warning("warm ClientApp process unreachable (%s): launching task %d cold", exc, spec.task_id)
        self.cold_launches += 1
        return self.cold.launch(spec)

    def reconcile(self) -> None:
        if self.warm:
            self._warm()  # started before the first task, restarted if it died

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # EOF: it exits; its children finish their tasks
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _run_task(order: dict[str, Any]) -> int:
    """In the forked child: what ``flwr-clientapp --token ...`` runs; its exit code."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    address, token, insecure = str(order["runtime_api_address"]), str(order["token"]), bool(order["insecure"])
    certificates = validate_and_resolve_root_certificates(order.get("root_certificates"), insecure)
    run_clientapp(
        runtime_api_address=address,
        token=token,
        insecure=insecure,
        certificates=certificates,
        parent_pid=order.get("parent_pid"),
        runtime_dependency_install=False,
    )
    return 0


def _child(order: dict[str, Any]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the orders are the warm process's, not the task's
    code = 1
    try:
        code = _run_task(order)
    except SystemExit as exc:  # flwr_exit ends every ClientApp with sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a child must never return into the warm process's loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(orders: IO[bytes]) -> int:
    """Fork a child per order line until EOF (the guard went away)."""
    for line in orders:
        try:
            order = json.loads(line)
            if not isinstance(order, dict) or not isinstance(order.get("token"), str):
                raise ValueError("not a task order")
        except ValueError as exc:
            log.error("ignored a malformed order: %s", exc)
            continue
        if os.fork() == 0:
            _child(order)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--preload", action="append", default=[], help="a module to import before the first task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Runtime API call otherwise
    for module in args.preload:
        importlib.import_module(module)
    if threading.active_count() > 1:
        # fork copies only the calling thread; a lock another thread held would stay held
        log.warning("%d threads after the imports; forked ClientApps may hang", threading.active_count())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group; the guard decides
    return serve(sys.stdin.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
