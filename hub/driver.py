"""Which hub replica drives federated rounds: the holder of the rounds lease (hub/lease.py)
runs the SuperLink with its app guard and Fleet gateway, watches the runs and submits new
ones; every other replica forwards the operator's round commands to it.

Every replica with rounds on (a ``--superlink-port`` or ``--superlink``) competes for the
lease; one with ``--no-superlink`` never drives but still forwards. On taking the lease a
replica starts the SuperLink on the state database in its data dir (``--database``: runs
and registered SuperNodes survive), or adopts the one a dead holder on the same host left
running (hub/superlink_keeper.py). On losing it (renewal refused: another replica took
over after this one stalled) it stops ticking at once; its fenced writes are refused from
the successor's first taking on; it ends its SuperLink children unless the new holder is
on the same host (which adopts them). On shutdown the holder stops its SuperLink (the run
in progress fails, as with one hub) and releases the lease, so a successor takes over at
once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from starlette.requests import Request
from starlette.responses import Response

from hub.apps import write_signed_apps
from hub.lease import Holder, LeaseLost
from hub.rounds import connect, keeper
from hub.state import Hub
from hub.store.base import StoreUnavailable
from nexus_service.http import ApiError, offload
from nexus_wire.datadir import SuperLinkDir

log = logging.getLogger("nexus.hub.driver")
#: set on a request one replica forwards to another: the receiver never forwards it again
FORWARDED_HEADER = "nexus-forwarded-by"
#: the store's copy of the signed app statements, for replicas that do not drive
APPS_META = "federation_apps"
#: request headers that describe one hop, not the request
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length", "host"}


class RoundsDriver:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.lease = hub.lease
        #: SuperLink children this replica started or adopted and has not ended
        self._children = False
        #: the SuperLink is up and the app signed: the watcher may tick
        self._opened = False
        #: opening runs beside the renewals (starting a SuperLink can take longer than the TTL)
        self._opening: asyncio.Task[None] | None = None
        self._first_step = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def competes(self) -> bool:
        return self.hub.rounds.link is not None

    @property
    def driving(self) -> bool:
        return self.lease.held and self._opened

    async def start(self) -> Callable[[], Awaitable[None]]:
        """Compete for the lease; a hub alone (or the first replica up) holds it, with its
        SuperLink started, before it serves its first request, as a hub without replicas did."""
        if self.competes:
            self._tasks = [
                asyncio.create_task(self._keep(), name="nexus-rounds-lease"),
                asyncio.create_task(self._watch(), name="nexus-rounds-watch"),
            ]
            await self._first_step.wait()
            if self._opening is not None:
                await asyncio.gather(self._opening, return_exceptions=True)
        return self.stop

    # -- the lease --------------------------------------------------------------------------
    async def _keep(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("rounds lease step failed; retrying")
            self._first_step.set()
            await asyncio.sleep(self.lease.ttl_s / 3)

    async def step(self) -> None:
        """Renew the lease held, else try to take it (and then open the SuperLink)."""
        if self.lease.holding:
            try:
                renewed = await offload(self.lease.renew)
            except StoreUnavailable as exc:
                if not self.lease.held:  # past its TTL by our own clock: the successor may be driving
                    await self._step_down(f"the store did not answer before the lease ran out ({exc})")
                return
            if not renewed:
                await self._step_down("another replica holds the lease")
            return
        if self._opening is not None and not self._opening.done():
            return  # a previous taking is still opening: its children are not ours to judge yet
        if self._children:
            await self._end_orphans()
        if not await offload(self.lease.try_acquire):
            return
        log.info("this replica drives federated rounds now (lease token %s)", self.lease.token)
        self._opening = asyncio.create_task(self._open_then_drive(), name="nexus-rounds-open")

    async def _open_then_drive(self) -> None:
        try:
            await offload(self._open)
        except Exception:
            log.exception("could not start the SuperLink; giving the lease up")
            await offload(self.lease.release)
            return
        self._opened = True

    def _open(self) -> None:
        rounds = self.hub.rounds
        if rounds.keeper is not None:  # built afresh: the SuperLink's port is read now from the state dir
            link = rounds.link = connect(self.hub.settings)
            assert link is not None  # a keeper exists only for the hub's own SuperLink
            rounds.keeper = keeper(self.hub.settings, link)
            self._children = True
        rounds.open()
        _publish_apps(self.hub)

    async def _step_down(self, reason: str) -> None:
        self.lease.drop()
        self._opened = False
        log.warning("this replica no longer drives federated rounds: %s", reason)
        await self._end_orphans()

    async def _end_orphans(self) -> None:
        """End our SuperLink children unless a holder on this host adopts (or adopted) them."""
        keeper_ = self.hub.rounds.keeper
        if keeper_ is None or not self._children:
            return
        try:
            current = await offload(self.lease.holder)
        except StoreUnavailable:
            return  # nobody can take over unseen meanwhile: try again next step
        holder = Holder.parse(current.holder) if current is not None else None
        if holder is None:
            return  # nobody drives: the next holder adopts them, or ends them if it is elsewhere
        if holder.host != self.lease.me.host:
            await offload(keeper_.close)
        self._children = False

    # -- the runs ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            if self.driving:
                try:
                    await offload(self.hub.rounds.tick)
                except LeaseLost as exc:
                    await self._step_down(str(exc))
                except Exception:
                    log.exception("watching the federated runs failed")
            await asyncio.sleep(self.hub.settings.rounds_watch_interval_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        if self.lease.holding:
            try:
                await offload(self.hub.rounds.close)
            finally:
                await offload(self.lease.release)
        elif self._children:
            await self._end_orphans()


def _publish_apps(hub: Hub) -> None:
    """Copy the driver's signed app statements into the store (hub/replicas.py reads them)."""
    rounds = hub.rounds
    if not rounds.apps.apps:
        return
    value = rounds.apps.model_dump_json()
    current = hub.store.claim_meta(APPS_META, value)
    if current != value:
        hub.store.swap_meta(APPS_META, current, value)
    if rounds.link is not None:  # an external SuperLink's guard reads them from its state dir
        write_signed_apps(SuperLinkDir(rounds.link.config.state_dir).trusted_apps, rounds.apps)


async def forward_to_driver(request: Request, hub: Hub, body: bytes = b"") -> Response | None:
    """A round command on a replica that does not drive rounds: the driver's answer to it.
    ``None`` when this replica is to handle it (it drives, or rounds are off everywhere).
    The caller authenticated the request already and read its ``body`` (the driver checks
    both again)."""
    if hub.lease.held:
        return None
    current = await offload(hub.lease.holder)
    if current is None:
        if hub.rounds.link is None:
            return None  # nobody drives and rounds are off here: the handler says so
        raise ApiError(503, "no hub replica drives federated rounds right now (one is taking over); retry", _RETRY)
    holder = Holder.parse(current.holder)
    if holder is None or request.headers.get(FORWARDED_HEADER) or holder == hub.lease.me:
        raise ApiError(503, "the replica that drives federated rounds is changing; retry", _RETRY)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    headers["host"] = request.headers.get("host", "")  # the dashboard's same-origin check reads it
    headers[FORWARDED_HEADER] = str(hub.lease.me)
    try:
        async with httpx.AsyncClient(timeout=120.0) as client:  # a submission is a `flwr run`: seconds
            reply = await client.request(
                request.method,
                holder.url + request.url.path,
                params=request.query_params,
                content=body,
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise ApiError(503, f"the replica that drives federated rounds did not answer ({exc}); retry", _RETRY) from None
    response = Response(reply.content, status_code=reply.status_code)
    for name, value in reply.headers.multi_items():  # Set-Cookie may come more than once
        if name.lower() not in _HOP | {"content-encoding", "server", "date"}:
            response.headers.append(name, value)
    return response


_RETRY = {"Retry-After": "2"}
