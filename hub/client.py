"""Operator client of the hub's HTTP API (the CLI, the benchmark and tests use it)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Self

import httpx

from hub.archive import pack
from hub.settings import DEFAULT_PORT
from models.errors import NexusError
from models.progress import Progress
from nexus_wire.datadir import HubDataDir

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: a federated run in one of these has ended
FINAL_STATUSES = ("finished", "failed", "stopped")


class HubError(NexusError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.status = status


def resolve_token(token: str | None, data_dir: str | None) -> str:
    """--token, then $NEXUS_HUB_TOKEN, then the admin token file of --data-dir."""
    if token:
        return token
    if os.environ.get("NEXUS_HUB_TOKEN"):
        return os.environ["NEXUS_HUB_TOKEN"]
    if data_dir:
        path = HubDataDir(Path(data_dir)).admin_token
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise NexusError(f"{path} does not exist; has the hub been started with this --data-dir?") from None
    raise NexusError("no admin token: pass --token, set NEXUS_HUB_TOKEN, or --data-dir of the hub")


class OperatorClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NexusError(f"cannot reach the hub at {self.url} ({exc})") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise HubError(response.status_code, message)
        return response.json()

    def create_token(self, tags: dict[str, str], ttl_s: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"tags": tags}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return self._request("POST", "/v1/tokens", json=body)

    def nodes(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/nodes")["nodes"]

    def revoke_node(self, node_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/nodes/{node_id}/revoke")

    def rotate_admin(self) -> dict[str, Any]:
        return self._request("POST", "/v1/admin/rotate")

    def push(self, bundle_dir: Path) -> dict[str, Any]:
        if not Path(bundle_dir).is_dir():
            raise NexusError(f"{bundle_dir} is not a bundle directory")
        return self._request(
            "POST", "/v1/models", content=pack(Path(bundle_dir)), headers={"Content-Type": "application/x-tar"}
        )

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models")["models"]

    def show(self, model: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{model}")

    def promote(
        self, model: str, version: str, stage: str, percent: int | None = None, force: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version, "stage": stage}
        if percent is not None:
            body["percent"] = percent
        if force:
            body["force"] = True
        return self._request("POST", f"/v1/models/{model}/promote", json=body)

    def assign(self, model: str, version: str, select: dict[str, str], percent: int = 100) -> dict[str, Any]:
        return self._request(
            "POST", f"/v1/models/{model}/assign", json={"version": version, "select": select, "percent": percent}
        )

    def rollback(self, model: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/models/{model}/rollback")

    # -- federated rounds (docs/federated.md) ----------------------------------------------
    def start_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/v1/rounds", json=body)

    def runs(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/rounds")["runs"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/rounds/{run_id}")

    def stop_run(self, run_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/rounds/{run_id}/stop")

    def wait_run(
        self, run_id: str, poll_s: float = 2.0, show_progress: bool = True, patience_s: float = 120.0
    ) -> dict[str, Any]:
        """Poll until the run ends, showing rounds done on stderr; the final run with its rounds.

        A hub restart in the middle is waited out (the run survives it: see hub/rounds.py).
        """
        run = self.run(run_id)
        progress = Progress(f"run {run_id}", int(run["config"]["rounds"]), enabled=show_progress)
        done = 0
        while run["status"] not in FINAL_STATUSES:
            time.sleep(poll_s)
            run = self._run_patiently(run_id, patience_s)
            if run["rounds_done"] > done:
                last = run["rounds"][-1] if run["rounds"] else {}
                progress.update(
                    run["rounds_done"] - done,
                    loss=last.get("loss") or 0.0,
                    score=last.get("score") or 0.0,
                    nodes=last.get("participants", 0),
                )
                done = run["rounds_done"]
        progress.close()
        return run

    def _run_patiently(self, run_id: str, patience_s: float) -> dict[str, Any]:
        """The run; while the hub cannot be reached (restarting) keep asking for ``patience_s``."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return self.run(run_id)
            except HubError:
                raise  # the hub answered: retrying will not change its mind
            except NexusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


class FunnelClient(OperatorClient):
    """The operator side of hub/api/funnels.py (paths and shapes in docs/funnels.md)."""

    def create_funnel(self, funnel_id: str, steps: list[str]) -> dict[str, Any]:
        return self._request("POST", "/v1/funnels", json={"id": funnel_id, "steps": steps})

    def funnels(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/funnels")["funnels"]

    def funnel(self, funnel_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/funnels/{funnel_id}")

    def create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/v1/experiments", json=body)

    def experiments(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/experiments")["experiments"]

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/experiments/{experiment_id}")

    def start(self, experiment_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/experiments/{experiment_id}/start")

    def stop(self, experiment_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/experiments/{experiment_id}/stop")

    def results(self, experiment_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/experiments/{experiment_id}/results")

    def history(self, experiment_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/experiments/{experiment_id}/history")["history"]
