"""Hub replicas on one Redis behind one address, as tests/e2e/test_replicas.py runs them (no tests here).

:class:`RoundRobinProxy` is the load balancer: a TCP proxy on 127.0.0.1 that hands each new
connection to the next replica that accepts it, as an L4 balancer does (a keep-alive
connection stays on its replica until that replica goes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import threading
from collections import Counter
from pathlib import Path

import onnx
from onnx import numpy_helper

from models.bundle import DEFAULT_REPOSITORY, list_versions, read_manifest, write_manifest
from nexus_service.processes import end_process_tree
from nexus_wire.datadir import HubDataDir
from tests.support.processes import HubProcess


class RoundRobinProxy:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._next = itertools.cycle(range(len(ports)))
        #: connections handed to each backend port
        self.connections: Counter[int] = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="round-robin-proxy", daemon=True)
        self.port = 0

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _backend(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[next(self._next)]
            try:
                pair = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # a replica that is down: the next one
            self.connections[port] += 1
            return pair
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = await self._backend()
        if backend is None:
            writer.close()
            return
        up_reader, up_writer = backend

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def kill_with_children(hub: HubProcess) -> None:
    """SIGKILL a replica and the SuperLink, app guard and Fleet gateway it runs (they live in
    sessions of their own): the loss of its machine or pod, not only of its process."""
    hub.kill()
    layout = HubDataDir(hub.data_dir).superlink
    for pid_file in (layout.pid, layout.guard_pid, layout.gateway_pid):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if _cmdline(pid):
            end_process_tree(pid, kill=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def funnel_bundles(root: Path) -> tuple[Path, Path]:
    """The shipped funnel bundle, and a copy with another output bias as its next version."""
    version = list_versions(DEFAULT_REPOSITORY, "funnel")[-1]
    old, new = root / "bundles" / "old", root / "bundles" / "new"
    shutil.copytree(DEFAULT_REPOSITORY / "funnel" / version, old)
    shutil.copytree(old, new)
    (new / "signature.json").unlink(missing_ok=True)
    model = onnx.load(new / "model.onnx")
    bias = model.graph.initializer[-1]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    onnx.save(model, new / "model.onnx")
    body = {k: v for k, v in read_manifest(new).items() if k not in ("files", "format")}
    write_manifest(new, {**body, "version": str(int(version) + 1), "parent_version": version})
    return old, new
