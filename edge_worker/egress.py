"""The egress gateway: the one module of the edge that opens connections to the hub.

Every request names a declared payload kind; a body must validate against that kind's
schema (numbers, enums, ids; no free text) or it is refused before a byte leaves the
node. Per-kind message and byte counters feed ``/metrics``; the audit log (issue 7)
hooks in at :meth:`HubGateway._send`, the single place bytes go out.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_worker.identity import NodeIdentity
from models.errors import NexusError

ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
_CHUNK = 1 << 16


class PayloadKind(str, Enum):
    ENROLLMENT = "enrollment"
    HEARTBEAT = "heartbeat"
    ASSIGNMENT_POLL = "assignment-poll"
    BUNDLE_DOWNLOAD = "bundle-download"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentPayload(_Payload):
    token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,128}$")]


class HeartbeatPayload(_Payload):
    models: Annotated[dict[ModelName, Version], Field(max_length=64)] = {}
    health: Literal["ok", "degraded", "starting", "unhealthy"]
    request_rate: float = Field(0.0, ge=0)
    queue_depth: int = Field(0, ge=0)
    #: assigned bundles this node currently refuses (failed verification)
    bundle_refusals: int = Field(0, ge=0)
    sync_errors: int = Field(0, ge=0)


class BundleFileRequest(_Payload):
    """Not sent as a body: it is the URL path, validated like one."""

    model: ModelName
    version: Version
    name: FileName


#: kind -> the schema its body must match (None: the request carries no body)
DECLARED: dict[PayloadKind, type[_Payload] | None] = {
    PayloadKind.ENROLLMENT: EnrollmentPayload,
    PayloadKind.HEARTBEAT: HeartbeatPayload,
    PayloadKind.ASSIGNMENT_POLL: None,
    PayloadKind.BUNDLE_DOWNLOAD: BundleFileRequest,
}


class PayloadRefused(NexusError):
    """A payload that is not of a declared kind and schema; nothing was sent."""


class HubUnreachable(NexusError):
    """The hub cannot be reached or answered 5xx: retry later with backoff."""


class HubRejected(NexusError):
    """The hub answered 4xx: retrying the same request will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub refused ({status}): {message}")
        self.status = status


class HubGateway:
    def __init__(self, hub_url: str, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.identity: NodeIdentity | None = None
        self.messages: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()
        self._http = httpx.AsyncClient(base_url=self.hub_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _check(self, kind: PayloadKind, payload: _Payload | None) -> bytes | None:
        if kind not in DECLARED:
            raise PayloadRefused(f"undeclared payload kind {kind!r}")
        schema = DECLARED[kind]
        if schema is None:
            if payload is not None:
                raise PayloadRefused(f"{kind.value} carries no payload")
            return None
        if type(payload) is not schema:
            raise PayloadRefused(f"{kind.value} needs a {schema.__name__}, got {type(payload).__name__}")
        try:
            # re-validate: a frozen model can still be built with model_construct()
            schema.model_validate(payload.model_dump())
        except ValidationError as exc:
            raise PayloadRefused(f"{kind.value} payload refused: {exc.errors()[0]['msg']}") from None
        return payload.model_dump_json().encode()

    def _headers(self, authenticated: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if authenticated:
            if self.identity is None:
                raise NexusError("this node is not enrolled with the hub")
            headers["Authorization"] = f"Bearer {self.identity.credential()}"
        return headers

    async def _send(
        self, kind: PayloadKind, method: str, path: str, payload: _Payload | None, authenticated: bool = True, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = self._check(kind, payload)
        request = self._http.build_request(
            method, path, content=body, headers=self._headers(authenticated, {**(headers or {}), **({"Content-Type": "application/json"} if body else {})})
        )
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"{self.hub_url}: {type(exc).__name__}: {exc}") from None
        self._count(kind, len(body or b""), len(response.content))
        _raise_for_status(response)
        return response

    def _count(self, kind: PayloadKind, sent: int, received: int) -> None:
        self.messages[kind.value] += 1
        self.bytes_out[kind.value] += sent
        self.bytes_in[kind.value] += received

    # -- the declared calls ----------------------------------------------------------------
    async def enroll(self, token: str) -> dict[str, Any]:
        response = await self._send(PayloadKind.ENROLLMENT, "POST", "/v1/enroll", EnrollmentPayload(token=token), authenticated=False)
        return response.json()

    async def heartbeat(self, payload: HeartbeatPayload) -> dict[str, Any]:
        return (await self._send(PayloadKind.HEARTBEAT, "POST", "/v1/nodes/me/heartbeat", payload)).json()

    async def poll_assignments(self, etag: str | None) -> tuple[str, dict[str, Any]] | None:
        """``(etag, body)`` when assignments changed since ``etag``, ``None`` on 304."""
        headers = {"If-None-Match": etag} if etag else {}
        response = await self._send(PayloadKind.ASSIGNMENT_POLL, "GET", "/v1/nodes/me/assignments", None, headers=headers)
        if response.status_code == 304:
            return None
        return response.headers.get("ETag", ""), response.json()

    async def download_file(self, model: str, version: str, name: str, dest: Path, max_bytes: int) -> str:
        """Stream one bundle file to ``dest`` (via ``dest.part``); return its sha256."""
        try:
            request = BundleFileRequest(model=model, version=version, name=name)
        except ValidationError as exc:
            raise PayloadRefused(f"bundle file request refused: {exc.errors()[0]['msg']}") from None
        self._check(PayloadKind.BUNDLE_DOWNLOAD, request)
        path = f"/v1/models/{model}/versions/{version}/files/{name}"
        part = dest.with_name(dest.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            async with self._http.stream("GET", path, headers=self._headers(True)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_status(response)
                with open(part, "wb") as fh:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise HubRejected(413, f"{name} is larger than the {max_bytes} bytes the manifest allows")
                        digest.update(chunk)
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"{self.hub_url}: download of {model}/{version}/{name} broke off: {type(exc).__name__}") from None
        finally:
            self._count(PayloadKind.BUNDLE_DOWNLOAD, 0, size)
        os.replace(part, dest)
        return digest.hexdigest()


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    if response.status_code >= 500:
        raise HubUnreachable(f"hub answered {response.status_code}: {message}")
    raise HubRejected(response.status_code, message)
