"""The egress gateway: the one module of the edge that opens connections to the hub.

Every request names a payload kind declared in :mod:`edge_worker.payloads` and must pass
its :func:`~edge_worker.payloads.check_payload` (numbers, enums, ids; no free text), or it
is refused, logged as a ``refusal`` in the node's audit log, and never sent. All bytes go
out through :meth:`HubGateway._send` (JSON bodies) or :meth:`HubGateway.download_file`
(bundle files), which write the exact body, the request target and the node id to the audit
log *before* it leaves, and keep the hub's signed receipt (``Nexus-Receipt`` header) beside
that entry if it binds exactly those (the log refuses any other). A new kind is named
in nexus_wire/payloads.py, declares its schema in edge_worker/payloads.py and calls
``_send``: it inherits the check, the log and the receipt. Counter keys come from the
funnel config: whoever fetches it sets ``gateway.declared``. Per-kind message and byte
counters feed ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_worker.audit import AuditLog, Entry
from edge_worker.hub_answers import (
    MAX_ANSWER_BYTES,
    MAX_FUNNEL_CONFIG_BYTES,
    EnrollmentAnswer,
    HeartbeatAnswer,
    HubAnswerRefused,
    assignment_document,
    decode,
    etag,
    validated,
)
from edge_worker.identity import NodeIdentity
from edge_worker.payloads import Declarations, PayloadRefused, check_payload
from models.errors import NexusError
from nexus_wire.apps import SignedApps
from nexus_wire.heads import HEADER as RECEIPT_HEADER
from nexus_wire.heads import canonical_json, decode_header
from nexus_wire.payloads import ASSIGNMENT_POLL, BUNDLE_DOWNLOAD, COUNTERS, ENROLLMENT, HEARTBEAT, gateway_channel
from nexus_wire.signed_assignments import MAX_DOCUMENT_BYTES, AssignmentDocument

log = logging.getLogger("nexus.edge.egress")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class HeartbeatPayload:
    """Typed builder of the heartbeat body; ``check_payload`` is what judges it."""

    health: str
    models: dict[str, str] = field(default_factory=dict)
    request_rate: float = 0.0
    queue_depth: int = 0
    #: assigned bundles this node currently refuses (failed verification)
    bundle_refusals: int = 0
    sync_errors: int = 0
    #: the node's audit log: totals, and the last verification (None: not verified yet, not sent)
    bytes_sent: int | None = None
    audit_entries: int | None = None
    audit_ok: bool | None = None
    audit_verified_at: float | None = None
    #: the newest signed tree head {size, root, time, key_id, signature} (None: empty log, not sent)
    audit_head: dict[str, Any] | None = None
    #: {first_size, proof}: audit_head extends the head of first_size the hub holds (None: not sent)
    audit_consistency: dict[str, Any] | None = None


class HubUnreachable(NexusError):
    """The hub cannot be reached or answered 5xx: retry later with backoff."""


class HubRejected(NexusError):
    """The hub answered 4xx: retrying the same request will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub refused ({status}): {message}")
        self.status = status


class HubGateway:
    def __init__(
        self,
        hub_url: str,
        audit: AuditLog,
        declared: Declarations | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.audit = audit
        self.declared = declared or Declarations()
        self.identity: NodeIdentity | None = None
        self.messages: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()
        #: answers without a receipt, or with one that does not verify (kept in the log regardless)
        self.receipt_problems = 0
        self._pinned: str | None = None
        # identity: an answer is capped by the bytes that arrive, so none may expand after the cap
        self._http = httpx.AsyncClient(
            base_url=self.hub_url, timeout=timeout, transport=transport, headers={"Accept-Encoding": "identity"}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _admit(
        self,
        kind: str,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None,
        in_path: bool = False,
        node: str | None = None,
    ) -> tuple[bytes, Entry]:
        """Check ``payload`` and log it: the refusal (then raise), or the send of its exact
        body (none when the payload travels ``in_path``), with the request target and the
        ``node`` it goes out as: what the hub's receipt must bind."""
        channel = gateway_channel(kind)
        if self.identity is not None:
            await self._pin(self.identity.hub_public_key)  # a node enrolled before the audit log existed
        try:
            summary = check_payload(kind, {} if payload is None else payload, self.declared)
            body = b"" if payload is None or in_path else canonical_json(dict(payload)).encode("utf-8")
        except PayloadRefused as exc:
            # the reason names the field, never its value: the log keeps no free text either
            await asyncio.to_thread(self.audit.record_refusal, channel, self.hub_url, kind, exc.reason)
            raise
        except (TypeError, ValueError) as exc:  # passed the schema but is not plain JSON
            await asyncio.to_thread(self.audit.record_refusal, channel, self.hub_url, kind, f"not JSON: {exc}")
            raise PayloadRefused(kind, f"not JSON: {exc}") from None
        sent = {**summary, "request": f"{method} {self._target(path)}", **({"node": node} if node else {})}
        entry = await asyncio.to_thread(self.audit.record_send, channel, self.hub_url, kind, body, sent)
        return body, entry

    def _target(self, path: str) -> str:
        """The request target as it goes on the wire (httpx puts the hub URL's own path first)."""
        return httpx.URL(self.hub_url + path).raw_path.decode("ascii")

    async def _receipt(self, entry: Entry, response: httpx.Response, node: str | None = None) -> None:
        """Keep the hub's receipt if it binds this node, this request and these bytes; the audit
        log refuses any other (``node``: the id an enrollment reply assigned)."""
        receipt = decode_header(response.headers.get(RECEIPT_HEADER, ""))
        if receipt is None:
            if response.status_code not in (401, 403):  # the hub signs nothing for a caller it refused
                self.receipt_problems += 1
                log.warning("the hub sent no receipt for audit entry %d (%s)", entry.id, entry.kind)
            return
        problem = await asyncio.to_thread(self.audit.attach_receipt, entry.id, receipt, node)
        if problem:
            self.receipt_problems += 1
            log.warning("refused the hub's receipt for audit entry %d (%s): %s", entry.id, entry.kind, problem)

    async def _pin(self, hub_public_key: str) -> None:
        """Pin the key receipts are checked against: once, not on every request."""
        if self._pinned == hub_public_key:
            return
        if await asyncio.to_thread(self.audit.pinned_hub_key) != hub_public_key:
            try:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(hub_public_key, validate=True))
            except ValueError:
                raise NexusError(f"{self.hub_url} sent a malformed public key") from None
            await asyncio.to_thread(self.audit.pin_hub_key, key, self.hub_url)
        self._pinned = hub_public_key

    def _headers(self, authenticated: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if authenticated:
            if self.identity is None:
                raise NexusError("this node is not enrolled with the hub")
            headers["Authorization"] = f"Bearer {self.identity.credential()}"
        return headers

    async def _send(
        self,
        kind: str,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None,
        authenticated: bool = True,
        headers: dict[str, str] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> httpx.Response:
        """The one place a request body leaves the node: check, log, send, keep the receipt.
        The answer is read up to ``max_answer_bytes`` (a longer one is refused unread)."""
        request_headers = self._headers(authenticated, headers)
        node = self.identity.node_id if authenticated and self.identity is not None else None
        body, entry = await self._admit(kind, method, path, payload, node=node)
        if body:
            request_headers["Content-Type"] = "application/json"
        request = self._http.build_request(method, path, content=body or None, headers=request_headers)
        try:
            streamed = await self._http.send(request, stream=True)
            try:
                content = await _read_capped(streamed, max_answer_bytes)
            finally:
                await streamed.aclose()
        except httpx.HTTPError as exc:
            raise HubUnreachable(f"{self.hub_url}: {type(exc).__name__}: {exc}") from None
        self._count(kind, len(body), len(content or b""))
        if content is None:
            await self._receipt(entry, streamed)
            raise HubAnswerRefused(
                f"answer to {method} {path}", f"larger than {max_answer_bytes} bytes or content-encoded (not read)"
            )
        response = httpx.Response(streamed.status_code, headers=streamed.headers, content=content, request=request)
        if kind == ENROLLMENT and response.status_code < 400:
            # the enrollment reply carries the key its own receipt is signed with, and the
            # node id that receipt binds
            enrolled = validated("enrollment answer", EnrollmentAnswer, decode("enrollment answer", content))
            await self._pin(enrolled.public_key)
            node = enrolled.node_id
        await self._receipt(entry, response, node)
        _raise_for_status(response)
        return response

    def _count(self, kind: str, sent: int, received: int) -> None:
        self.messages[kind] += 1
        self.bytes_out[kind] += sent
        self.bytes_in[kind] += received

    # -- the declared calls ----------------------------------------------------------------
    async def enroll(self, token: str) -> EnrollmentAnswer:
        response = await self._send(ENROLLMENT, "POST", "/v1/enroll", {"token": token}, authenticated=False)
        return validated("enrollment answer", EnrollmentAnswer, decode("enrollment answer", response.content))

    async def heartbeat(self, payload: HeartbeatPayload) -> HeartbeatAnswer:
        body = {name: value for name, value in asdict(payload).items() if value is not None}
        response = await self._send(HEARTBEAT, "POST", "/v1/nodes/me/heartbeat", body)
        return validated("heartbeat answer", HeartbeatAnswer, decode("heartbeat answer", response.content))

    async def poll_assignments(self, known: str | None) -> tuple[str, AssignmentDocument] | None:
        """``(etag, document)`` when assignments changed since ETag ``known``, ``None`` on 304;
        the document is validated and its signature verified against the pinned hub key."""
        if self.identity is None:
            raise NexusError("this node is not enrolled with the hub")
        headers = {"If-None-Match": known} if known else {}
        response = await self._send(
            ASSIGNMENT_POLL,
            "GET",
            "/v1/nodes/me/assignments",
            None,
            headers=headers,
            max_answer_bytes=MAX_DOCUMENT_BYTES,
        )
        if response.status_code == 304:
            return None
        identity = self.identity
        document = assignment_document(response.content, identity.public_key(), identity.node_id)
        return etag("assignments", response.headers.get("ETag")), document

    async def poll_funnel_config(self, known: str | None) -> tuple[str, dict[str, Any]] | None:
        """``(etag, config)`` when the funnel config changed since ETag ``known``, ``None`` on 304:
        one JSON object read within its cap, which ``FunnelConfig`` validates before using any of it.
        A body-less poll like the assignments one, so it shares that payload kind."""
        headers = {"If-None-Match": known} if known else {}
        response = await self._send(
            ASSIGNMENT_POLL,
            "GET",
            "/v1/nodes/me/funnel-config",
            None,
            headers=headers,
            max_answer_bytes=MAX_FUNNEL_CONFIG_BYTES,
        )
        if response.status_code == 304:
            return None
        return etag("funnel config", response.headers.get("ETag")), decode("funnel config", response.content)

    async def fetch_signed_apps(self) -> SignedApps:
        """The hub's signed statements of the Flower apps it submits (nexus_wire/apps.py),
        validated; whether each signature holds is for the caller to check with the pinned key.
        A body-less poll like the assignments one, so it shares that payload kind."""
        response = await self._send(ASSIGNMENT_POLL, "GET", "/v1/federation/apps", None)
        return validated("signed apps", SignedApps, decode("signed apps", response.content))

    async def report_counters(self, node_id: str, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Absolute per-node counts (hub.funnel_schemas.NodeReportIn): a retry can never double-count.
        Only the answer's status matters: its body is not used."""
        rows = [{"experiment": e, "variant": v, "step": s, "count": c} for (e, v, s), c in sorted(counts.items())]
        await self._send(COUNTERS, "POST", "/v1/nodes/me/counters", {"node_id": node_id, "counts": rows})

    async def download_file(
        self, model: str, version: str, name: str, dest: Path, max_bytes: int, sha256: str | None = None
    ) -> str:
        """Stream one bundle file to ``dest`` (via ``dest.part``); return its sha256. The
        request carries no body: its path is checked and logged like one. Given the file's
        ``sha256``, a ``.part`` left by a broken download is resumed (``Range``; the hub answers
        206 with the rest), and a resumed file that does not hash to it is fetched once more whole."""
        path = f"/v1/models/{model}/versions/{version}/files/{name}"
        headers = self._headers(True)
        assert self.identity is not None  # _headers refused an unenrolled node
        _, entry = await self._admit(
            BUNDLE_DOWNLOAD,
            "GET",
            path,
            {"model": model, "version": version, "name": name},
            in_path=True,
            node=self.identity.node_id,
        )
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if sha256 is not None and part.is_file() else 0
        if 0 < have < max_bytes:
            headers["Range"] = f"bytes={have}-"
        else:
            have = 0
        digest, size, resumed = hashlib.sha256(), 0, False
        try:
            async with self._http.stream("GET", path, headers=headers) as response:
                await self._receipt(entry, response)
                if have and response.status_code == 416:
                    part.unlink()  # nothing left to fetch past the part: it is not this file
                    return await self.download_file(model, version, name, dest, max_bytes, sha256)
                if response.status_code >= 400:
                    error = await _read_capped(response, MAX_ANSWER_BYTES)
                    _raise_for_status(httpx.Response(response.status_code, content=error or b""))
                if _encoded(response):
                    raise HubAnswerRefused(f"{name} download", "content-encoded (this node reads only identity)")
                if response.status_code == 206:
                    if not (have and _resumes_at(response, have)):
                        raise HubAnswerRefused(f"{name} download", "a part of the file this node did not ask for")
                    resumed = True
                    digest = await asyncio.to_thread(_hash_file, part)
                    size = have
                with open(part, "ab" if resumed else "wb") as fh:
                    async for chunk in response.aiter_raw(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise HubRejected(413, f"{name} is larger than the {max_bytes} bytes the manifest allows")
                        digest.update(chunk)
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise HubUnreachable(
                f"{self.hub_url}: download of {model}/{version}/{name} broke off: {type(exc).__name__}"
            ) from None
        finally:
            self._count(BUNDLE_DOWNLOAD, 0, size - have if resumed else size)
        if resumed and digest.hexdigest() != sha256:
            part.unlink()  # the part was not a prefix of this file after all: once more, whole
            return await self.download_file(model, version, name, dest, max_bytes, sha256)
        os.replace(part, dest)
        return digest.hexdigest()


def _resumes_at(response: httpx.Response, offset: int) -> bool:
    """Whether a 206 is the rest of the file from ``offset`` (a 200 is the whole file, which
    replaces the part)."""
    return response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")


def _hash_file(path: Path) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest


def _encoded(response: httpx.Response) -> bool:
    return response.headers.get("Content-Encoding", "identity").strip().lower() not in ("identity", "")


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The raw body, or None once it passes ``limit`` bytes (the rest is never read) or when it
    is content-encoded (it could grow past the cap after it)."""
    if _encoded(response):
        return None
    chunks, size = [], 0
    async for chunk in response.aiter_raw(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json()["error"])[:200]
    except (ValueError, KeyError, TypeError, RecursionError):
        message = response.text[:200]
    if response.status_code >= 500:
        raise HubUnreachable(f"hub answered {response.status_code}: {message}")
    raise HubRejected(response.status_code, message)
