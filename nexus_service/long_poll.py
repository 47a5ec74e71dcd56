"""Asking a Flower API again while its answer says "not yet": long polls in front of Flower's polls.

Flower's processes poll with long fixed sleeps: a SuperNode that pulls no message sleeps 3 s,
and any Flower client that finds a message's object not yet uploaded backs off a whole second,
then two (flwr/supercore/inflatable/inflatable_utils.py ``pull_objects``). Whoever stands
between such a client and the API, the hub's Fleet gateway (hub/fleet_gateway.py) and the app
guard's relay of a SuperNode's Runtime API (federated/runtime_relay.py), can instead ask the API
again at a short interval and answer once the answer is worth having, or as it stands when the
hold ends. The request goes out byte for byte as it came each time, signed headers included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from flwr.proto.fleet_pb2 import PullMessagesResponse
from flwr.proto.message_pb2 import PullObjectResponse
from google.protobuf.message import DecodeError

#: seconds between two asks while a run is exchanging messages, and while it is not
FAST_CHECK_S, IDLE_CHECK_S = 0.05, 0.5

#: an answer and its raw body -> whether to ask again
Waiting = Callable[[httpx.Response, bytes], bool]
#: hop-by-hop headers and those a forwarded request or answer gets anew
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def forwarded_headers(pairs: list[tuple[bytes, bytes]], drop: frozenset[str] = HOP_BY_HOP) -> list[tuple[bytes, bytes]]:
    """The headers a forwarder passes on (names compared case-insensitively)."""
    return [(name, value) for name, value in pairs if name.decode("latin-1").lower() not in drop]


def answer_headers(answer: httpx.Response) -> dict[str, str]:
    """An upstream answer's headers as a forwarder passes them back."""
    return {n.decode("latin-1"): v.decode("latin-1") for n, v in forwarded_headers(answer.headers.raw)}


def _plain(answer: httpx.Response) -> bool:
    # an encoded or failed answer is passed on as it is: the relay decodes nothing it forwards
    return answer.status_code == 200 and not answer.headers.get("content-encoding")


def no_message_yet(answer: httpx.Response, raw: bytes) -> bool:
    """A pull of messages (Fleet API) that found none."""
    if not _plain(answer):
        return False
    try:
        return len(PullMessagesResponse.FromString(raw).messages_list) == 0
    except DecodeError:
        return False


def object_on_its_way(answer: httpx.Response, raw: bytes) -> bool:
    """A pull of an object (Fleet or Runtime API) the store knows but has not got the bytes of yet."""
    if not _plain(answer):
        return False
    try:
        found = PullObjectResponse.FromString(raw)
    except DecodeError:
        return False
    return found.object_found and not found.object_available


async def ask_until(
    ask: Callable[[], Awaitable[tuple[httpx.Response, bytes]]],
    waiting: Waiting,
    hold_s: float,
    every: Callable[[], float],
    gone: Callable[[], Awaitable[bool]],
) -> tuple[httpx.Response, bytes, bool]:
    """``ask()`` until its answer is not ``waiting``, ``hold_s`` passed or the caller is ``gone()``;
    the last answer, its raw body, and whether it was one worth waiting for. httpx errors propagate."""
    deadline = time.monotonic() + hold_s
    while True:
        answer, raw = await ask()
        if not waiting(answer, raw):
            return answer, raw, True
        if time.monotonic() >= deadline or await gone():
            return answer, raw, False
        await asyncio.sleep(every())


async def send_raw(
    client: httpx.AsyncClient, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[httpx.Response, bytes]:
    """One POST; the answer and its raw body (with its content-encoding, if it has one)."""
    answer = await client.send(client.build_request("POST", path, headers=headers, content=body), stream=True)
    try:
        return answer, b"".join([chunk async for chunk in answer.aiter_raw()])
    finally:
        await answer.aclose()
