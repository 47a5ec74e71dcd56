"""The hub's tests run on both stores: SQLite (the embedded default) and Redis (a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store.base import Store
from tests.support.env import need, port_open
from tests.support.hub import cleanup, store_for
from tests.support.s3 import CREDENTIALS, moto_server, new_bucket


@pytest.fixture
def redis_url() -> str:
    need(port_open("127.0.0.1", 6379), "no Redis server on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    store = store_for(store_kind, tmp_path, redis_url)
    yield store
    cleanup(store)


@pytest.fixture
def hub_store(any_store: Store) -> Store:
    """The ``hub`` fixture's store: every store (a test parametrized with ``store_kind`` picks one)."""
    return any_store


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback, and the credentials boto3 reads."""
    with pytest.MonkeyPatch.context() as env, moto_server() as endpoint:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture
def s3_blobs(s3_endpoint: str) -> str:
    """The blob store URL of a fresh bucket on that server."""
    return f"s3://{new_bucket(s3_endpoint)}/bundles?endpoint_url={s3_endpoint}&region=us-east-1"
