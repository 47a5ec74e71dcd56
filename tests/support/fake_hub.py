"""A hub that answers whatever the test scripts, on a real HTTP server on 127.0.0.1 (no tests here).

It answers the edge's sync like the real hub (enrollment, heartbeat, signed assignments, funnel
config, bundle files) until a test scripts another answer for a path: hostile JSON, a wrong
signature, an endless body. It holds its own Ed25519 key, which the edge pins at enrollment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from models.bundle import MANIFEST, read_manifest, sign_bundle
from nexus_service.keyfiles import public_key_b64
from nexus_tools.processes import ServerThread
from nexus_wire.assignment import ALGORITHM
from nexus_wire.heads import key_id
from nexus_wire.signed_assignments import FORMAT, signed_message

ENROLL, HEARTBEAT = "/v1/enroll", "/v1/nodes/me/heartbeat"
ASSIGNMENTS, FUNNEL_CONFIG = "/v1/nodes/me/assignments", "/v1/nodes/me/funnel-config"
TOKEN = "nx_" + "t" * 43


def to_json(value: Any) -> bytes:
    """JSON as a careless (or hostile) server writes it: NaN and Infinity allowed."""
    return json.dumps(value, allow_nan=True).encode("utf-8")


@dataclass
class Answer:
    body: bytes | Callable[[Request], AsyncIterator[bytes]] = b"{}"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def endless(chunk: bytes = b"[" * 65536) -> Callable[[Request], AsyncIterator[bytes]]:
    """A body that does not end before the reader goes (or 1 GiB): only a reader with a cap gets past it."""

    async def stream(request: Request) -> AsyncIterator[bytes]:
        for _ in range((1 << 30) // len(chunk)):
            if await request.is_disconnected():
                return  # uvicorn drops what is sent after a disconnect: do not spin on it
            yield chunk

    return stream


class FakeHub:
    def __init__(self, node_id: str = "n-0123456789abcdef", poll_interval_s: float = 0.2) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.node_id = node_id
        self.poll_interval_s = poll_interval_s
        #: model -> {"version", "archive_sha256", "archive_bytes"} the default assignment document names
        self.models: dict[str, dict[str, Any]] = {}
        #: request path -> the bytes of a bundle file
        self.files: dict[str, bytes] = {}
        #: request path -> the scripted answer, instead of the default one
        self.scripted: dict[str, Answer] = {}
        #: "METHOD path" of every request, in order
        self.requests: list[str] = []
        routes = [Route("/{path:path}", self._answer, methods=["GET", "POST"])]
        self.server = ServerThread(Starlette(routes=routes)).start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    # -- what it signs ---------------------------------------------------------------------
    def sign(self, document: Mapping[str, Any], key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """``document`` with the members a signed assignment document carries, signed as it is
        (hostile content included: only the edge's validation can stop it)."""
        key = key or self.key
        signed = {**document, "key_id": key_id(key.public_key())}
        signed.pop("signature", None)
        signed["signature"] = base64.b64encode(key.sign(signed_message(signed))).decode("ascii")
        return signed

    def document(
        self, models: Mapping[str, Any] | None = None, issued_at: float | None = None, node_id: str | None = None
    ) -> dict[str, Any]:
        """A well-formed signed document for this hub's node (``issued_at``: now)."""
        return self.sign(
            {
                "format": FORMAT,
                "node_id": node_id or self.node_id,
                "issued_at": time.time() if issued_at is None else issued_at,
                "models": dict(self.models if models is None else models),
            }
        )

    def enrollment(self) -> dict[str, Any]:
        """The answer to an enrollment, as the real hub gives it."""
        return {
            "node_id": self.node_id,
            "node_secret": "nx_" + "s" * 43,
            "tags": {"region": "1"},
            "public_key": public_key_b64(self.key.public_key()),
            "poll_interval_s": self.poll_interval_s,
        }

    def serve_bundle(self, bundle: Path, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """Sign a copy of ``bundle`` and serve its files; returns its assignment entry."""
        signed = bundle.parent / f"{bundle.name}.signed-{hashlib.sha256(bundle.name.encode()).hexdigest()[:6]}"
        shutil.rmtree(signed, ignore_errors=True)
        shutil.copytree(bundle, signed)
        sign_bundle(signed, key or self.key)
        manifest = read_manifest(signed)
        prefix = f"/v1/models/{manifest['name']}/versions/{manifest['version']}/files/"
        digest = hashlib.sha256()
        for path in sorted(signed.iterdir()):
            self.files[prefix + path.name] = path.read_bytes()
            digest.update(path.read_bytes())
        return {"version": manifest["version"], "archive_sha256": digest.hexdigest(), "archive_bytes": 1000}

    def serve_manifest(self, model: str, version: str, manifest: Mapping[str, Any]) -> None:
        """A manifest (hostile or not) for ``model``/``version``, signed with the hub key."""
        data = json.dumps(dict(manifest)).encode()
        prefix = f"/v1/models/{model}/versions/{version}/files/"
        self.files[prefix + MANIFEST] = data
        signature = {
            "alg": "ed25519",
            "key_id": key_id(self.key.public_key()),
            "signature": base64.b64encode(self.key.sign(data)).decode(),
        }
        self.files[prefix + "signature.json"] = json.dumps(signature).encode()

    # -- scripting -------------------------------------------------------------------------
    def script(self, path: str, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        """Answer ``path`` with ``body`` from now on: bytes as they are, anything else as JSON."""
        raw = body if isinstance(body, bytes) or callable(body) else to_json(body)
        extra = dict(headers or {})
        if path in (ASSIGNMENTS, FUNNEL_CONFIG):
            extra.setdefault("ETag", f'"{len(self.requests)}"')
        self.scripted[path] = Answer(raw, status, extra)

    def polls(self, path: str) -> int:
        return sum(r.endswith(" " + path) for r in self.requests)

    # -- the server ------------------------------------------------------------------------
    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        answer = self.scripted.get(path) or self._default(path)
        if callable(answer.body):
            return StreamingResponse(answer.body(request), answer.status, answer.headers, media_type="application/json")
        return Response(answer.body, answer.status, answer.headers, media_type="application/json")

    def _default(self, path: str) -> Answer:
        if path == ENROLL:
            return Answer(to_json(self.enrollment()), 201)
        if path == HEARTBEAT:
            return Answer(to_json({"poll_interval_s": self.poll_interval_s, "superlink": None}))
        if path == ASSIGNMENTS:
            document = self.document()
            tag = hashlib.sha256(json.dumps(document["models"], sort_keys=True).encode()).hexdigest()[:32]
            return Answer(to_json(document), headers={"ETag": f'"{tag}"'})
        if path == FUNNEL_CONFIG:
            config = {"assignment": ALGORITHM, "funnels": [], "experiments": []}
            return Answer(to_json(config), headers={"ETag": '"empty"'})
        if path in self.files:
            return Answer(self.files[path], headers={"Content-Type": "application/octet-stream"})
        if path == "/v1/nodes/me/counters":
            return Answer(b'{"accepted": 0}')
        return Answer(to_json({"error": f"no route {path}"}), 404)
