"""The Fleet gateway: the hub's public Flower port, which forwards the Fleet API (and the operator's reads).

Flower serves its Fleet (SuperNodes), Control (run submission, SuperNode registration) and
Runtime (app processes) APIs on one HTTP port, and open-source Flower authenticates no Control
API caller (``load_control_authn_plugin`` gives a no-op plugin unless Flower Enterprise is
installed). So the hub's SuperLink listens on loopback only (hub/superlink.py) and this gateway
stands on the address SuperNodes are told: it forwards ``POST /v1/fleet/<call>`` (the only paths
a SuperNode calls, flwr/supernode/fleet_http_client.py) to the SuperLink with the request's
headers, since SuperNode authentication (``--enable-supernode-auth``) signs them and the
SuperLink checks them, and answers 404 JSON to everything else: Control, Runtime, docs, health.

One exception, for the operator's ``flwr ls`` / ``flwr log`` / ``flwr supernode ls``: the
read-only Control calls in :data:`READ_ONLY_CONTROL` go through when the request carries the
hub's admin token as ``Authorization: Bearer`` (``--admin-token-file``, read per request so a
rotated token takes effect at once; ``nexus hub flower-login`` stores it where Flower's CLI
sends it from). Without it, with a wrong one, or for any other Control call (``start-run``,
``stop-run``, node registration...) the answer is the same 404 as for any unknown path: a
prober learns nothing, and Flower's CLI, which refreshes tokens only on a 401, does not try.
The header is removed before forwarding: the SuperLink's no-op Control authentication passes
requests without one, and the SuperLink has no business seeing the hub's admin token.

A SuperNode that pulls and finds nothing sleeps 3 s before it asks again
(flwr/supernode/start_client_internal.py), so a message the ServerApp sends waits 1.5 s on
average, and a round of train + evaluate twice that, before any node even sees it. The gateway
*holds* an empty ``pull-messages`` answer instead (a long poll, :class:`PullHold`): it asks the
SuperLink again every :data:`FAST_CHECK_S` while a run is exchanging messages (every
:data:`IDLE_CHECK_S` when none has for :data:`ACTIVE_S`) and answers as soon as there is a
message, or with the empty answer after :data:`HOLD_S`, well inside the SuperNode's 30 s read
timeout. A node that now sees a message at once may ask for its arrays (``pull-object``) before
the ServerApp has finished uploading them, and Flower's client then backs off a whole second (and
doubles it); the gateway holds an answer "found but not available yet" the same way, for up to
:data:`OBJECT_HOLD_S`. The SuperNode's request and its signed headers are sent as they came, each
time.

TLS terminates here (uvicorn's ssl options). With TLS the SuperLink behind it runs TLS as well
(Flower refuses SuperNode authentication without), so the gateway reaches it over TLS and checks
its certificate against the same CA. Run as ``python -m hub.fleet_gateway``; the hub starts and
supervises it beside its SuperLink (hub/superlink_keeper.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from nexus_service.http import error_response
from nexus_service.long_poll import (
    FAST_CHECK_S,
    HOP_BY_HOP,
    IDLE_CHECK_S,
    Waiting,
    answer_headers,
    ask_until,
    forwarded_headers,
    no_message_yet,
    object_on_its_way,
    send_raw,
)

log = logging.getLogger("nexus.hub.gateway")
#: a Fleet call's path, byte for byte as received: lowercase words and dashes, no dot segment,
#: no percent-encoding and no query a proxy or the SuperLink could read differently
FLEET_PATH = re.compile(rb"/v1/fleet/[a-z]+(-[a-z]+){0,7}")
#: the Control calls ``flwr ls``, ``flwr log`` and ``flwr supernode ls`` make, none of which writes
#: (flwr/superlink/routers/control/router.py); only with the admin token
READ_ONLY_CONTROL = frozenset({b"/v1/control/list-runs", b"/v1/control/stream-logs", b"/v1/control/list-nodes"})
#: what is not forwarded: hop-by-hop headers and those the forwarded request gets anew
_NOT_FORWARDED = HOP_BY_HOP
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: the call an idle SuperNode makes, the one for a message's arrays, and one that says a run is under way
PULL_PATH, OBJECT_PATH, PUSH_PATH = b"/v1/fleet/pull-messages", b"/v1/fleet/pull-object", b"/v1/fleet/push-messages"
#: how long an empty pull is held (the SuperNode's read timeout is 30 s), and an object still on its way
HOLD_S, OBJECT_HOLD_S = 20.0, 5.0
#: a run is "under way" this long after the last message went to or came from a node
ACTIVE_S = 60.0
#: a pull request is a node id; anything bigger is forwarded once, as it came
_MAX_PULL_BODY = 64 * 1024


class PullHold:
    """When a held pull asks again: fast while messages flow, gently when none has for a while."""

    def __init__(self, hold_s: float = HOLD_S, object_hold_s: float = OBJECT_HOLD_S) -> None:
        self.hold_s = hold_s
        self.object_hold_s = object_hold_s
        self.last_activity = float("-inf")

    def saw_activity(self) -> None:
        self.last_activity = time.monotonic()

    def check_every(self) -> float:
        return FAST_CHECK_S if time.monotonic() - self.last_activity < ACTIVE_S else IDLE_CHECK_S


def _admin_token(path: Path | None) -> bytes | None:
    try:
        token = path.read_bytes().strip() if path is not None else b""
    except OSError:
        return None
    return token or None


def _is_admin(pairs: list[tuple[bytes, bytes]], token_file: Path | None) -> bool:
    """Whether the request carries exactly one ``Authorization: Bearer <the hub's admin token>``."""
    sent = [value for name, value in pairs if name.lower() == b"authorization"]
    token = _admin_token(token_file)
    if token is None or len(sent) != 1:
        return False
    scheme, _, credential = sent[0].partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), token)


def create_app(
    upstream: str,
    verify: ssl.SSLContext | bool = True,
    timeout: float = 60.0,
    admin_token_file: Path | None = None,
    hold: PullHold | None = None,
) -> Starlette:
    """The gateway in front of the SuperLink at ``upstream`` (``http[s]://127.0.0.1:PORT``); with
    ``admin_token_file``, the read-only Control calls for whoever holds that token too. ``hold``:
    how empty pulls are held (a ``PullHold(0)`` answers them at once)."""
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(timeout, connect=10.0))
    hold = hold if hold is not None else PullHold()
    without_authorization = _NOT_FORWARDED | {"authorization"}

    def routable(request: Request, raw_path: bytes) -> frozenset[str] | None:
        """The headers not forwarded for this request, None when it is not forwarded at all."""
        if request.method != "POST" or request.scope.get("query_string"):
            return None
        if FLEET_PATH.fullmatch(raw_path):
            return _NOT_FORWARDED
        if raw_path in READ_ONLY_CONTROL and _is_admin(request.headers.raw, admin_token_file):
            return without_authorization
        return None

    async def forward(request: Request) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        drop = routable(request, raw_path)
        if drop is None:
            return error_response(
                404, f"no route {request.method} {request.url.path}: this port serves only Flower's Fleet API"
            )
        forwarded = forwarded_headers(request.headers.raw, drop)
        if raw_path == PUSH_PATH:
            hold.saw_activity()
        small = int(request.headers.get("content-length") or _MAX_PULL_BODY + 1) <= _MAX_PULL_BODY
        if raw_path == PULL_PATH and small:
            return await held(request, raw_path, forwarded, no_message_yet, hold.hold_s)
        if raw_path == OBJECT_PATH and small:
            return await held(request, raw_path, forwarded, object_on_its_way, hold.object_hold_s)
        outgoing = client.build_request("POST", raw_path.decode("ascii"), headers=forwarded, content=request.stream())
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            log.warning("SuperLink %s: %s", upstream, type(exc).__name__)
            return error_response(502, "the SuperLink behind this gateway is not reachable")
        # raw bytes with the SuperLink's content-encoding: the gateway decodes nothing
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=answer_headers(answer),
            background=BackgroundTask(answer.aclose),
        )

    async def held(
        request: Request,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        waiting: Waiting,
        hold_s: float,
    ) -> Response:
        """The call asked again while the answer is one to wait out, until the hold ends or the node hangs up."""
        body = await request.body()
        try:
            answer, raw, worth = await ask_until(
                lambda: send_raw(client, raw_path.decode("ascii"), headers, body),
                waiting,
                hold_s,
                hold.check_every,
                request.is_disconnected,
            )
        except httpx.HTTPError as exc:
            log.warning("SuperLink %s: %s", upstream, type(exc).__name__)
            return error_response(502, "the SuperLink behind this gateway is not reachable")
        if worth:
            hold.saw_activity()
        return Response(raw, status_code=answer.status_code, headers=answer_headers(answer))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=_METHODS)], lifespan=lifespan)


def upstream_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """How the gateway checks the SuperLink's certificate: against ``ca_file`` (plain HTTP without one)."""
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.fleet_gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="the address SuperNodes connect to")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--upstream-port", required=True, type=int, help="the SuperLink's port on 127.0.0.1")
    parser.add_argument("--ssl-certfile", type=Path, help="this gateway's certificate (TLS; with the next two)")
    parser.add_argument("--ssl-keyfile", type=Path)
    parser.add_argument("--ssl-ca-certfile", type=Path, help="CA that signed the gateway's and the SuperLink's")
    parser.add_argument(
        "--admin-token-file", type=Path, help="the hub's admin token: its bearer may make read-only Control calls"
    )
    args = parser.parse_args(argv)
    tls = (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile)
    if any(tls) and not all(tls):
        parser.error("TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if all(tls) else "http"
    upstream = f"{scheme}://127.0.0.1:{args.upstream_port}"
    app = create_app(upstream, upstream_verify(args.ssl_ca_certfile), admin_token_file=args.admin_token_file)
    # uvicorn costs an import only the gateway process pays
    import uvicorn

    log.info("fleet gateway on %s:%d (%s), SuperLink on 127.0.0.1:%d", args.host, args.port, scheme, args.upstream_port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=None if args.ssl_certfile is None else str(args.ssl_certfile),
        ssl_keyfile=None if args.ssl_keyfile is None else str(args.ssl_keyfile),
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
