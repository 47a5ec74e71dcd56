"""The edge's funnel endpoints: validation, sticky assignment, deduplicated counting, the cached config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.assignment import assign
from hub.funnel_config import Allocation, Experiment, Funnel, Status, Variant
from hub.funnel_schemas import config_document, config_etag
from nexus_wire.assignment import ASSIGNED
from tests.support.edge import edge_settings, operator

FUNNEL = Funnel("shop", ("view", "cart", "buy"))
EXPERIMENT = Experiment(
    "checkout-test", "shop", (Variant("A", 0.5), Variant("B", 0.5)), "buy", Status.RUNNING, Allocation.THOMPSON
)


def publish(client: TestClient, *experiments: Experiment) -> None:
    """What the sync loop does when the hub's config changes."""
    document = config_document([FUNNEL, Funnel("leads", ("visit",))], experiments)
    client.app.state.funnels.replace(config_etag(document), document)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(edge_settings(tmp_path, models=("funnel",)))) as c:
        publish(c, EXPERIMENT)
        yield c


def test_bad_input_is_a_4xx(client: TestClient) -> None:
    cases = [
        ("/v1/funnels/nope/assign", {"visitor_id": "v1"}, 404, "unknown funnel 'nope'"),
        ("/v1/funnels/nope/events", {"visitor_id": "v1", "step": "view"}, 404, "unknown funnel"),
        ("/v1/funnels/shop/events", {"visitor_id": "v1", "step": "pay"}, 422, "'pay' is not a step of funnel shop"),
        ("/v1/funnels/shop/events", {"visitor_id": "v1", "step": "$assigned"}, 422, "step"),
        ("/v1/funnels/shop/assign", {"visitor_id": "has space"}, 422, "visitor_id"),
        ("/v1/funnels/shop/assign", {"visitor_id": "v1", "extra": 1}, 422, "extra"),
        ("/v1/funnels/shop/assign", {}, 422, "visitor_id"),
    ]
    for path, body, status, message in cases:
        response = client.post(path, json=body)
        assert response.status_code == status and message in response.json()["error"], (path, body, response.text)
    assert (
        client.post(
            "/v1/funnels/shop/assign", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert client.app.state.edge.store.funnel_counts() == {}  # nothing refused was counted


def test_assignment_follows_the_documented_hash(client: TestClient) -> None:
    for visitor in ("alice", "bob", "v:with:colons", "visitor-0001"):
        reply = client.post("/v1/funnels/shop/assign", json={"visitor_id": visitor}).json()
        expected = assign("checkout-test", "", visitor, [("A", 0.5), ("B", 0.5)])
        assert reply == {"funnel": "shop", "experiment": "checkout-test", "variant": expected, "version": 1}


def test_steps_are_counted_once_per_visitor(client: TestClient) -> None:
    variant = client.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).json()["variant"]
    client.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"})  # a reload of the page
    first = client.post("/v1/funnels/shop/events", json={"visitor_id": "v1", "step": "cart"}).json()
    again = client.post("/v1/funnels/shop/events", json={"visitor_id": "v1", "step": "cart"}).json()
    assert first == {
        "funnel": "shop",
        "experiment": "checkout-test",
        "variant": variant,
        "step": "cart",
        "counted": True,
    }
    assert again["counted"] is False
    # a visitor whose first contact is an event gets the variant the hash gives them, counted as assigned
    late = client.post("/v1/funnels/shop/events", json={"visitor_id": "v2", "step": "view"}).json()
    assert late["counted"] and late["variant"] == assign("checkout-test", "", "v2", [("A", 0.5), ("B", 0.5)])
    counts = client.app.state.edge.store.funnel_counts()
    expected: dict[tuple[str, str, str], int] = {}
    for key in (
        ("checkout-test", variant, ASSIGNED),
        ("checkout-test", variant, "cart"),
        ("checkout-test", late["variant"], ASSIGNED),
        ("checkout-test", late["variant"], "view"),
    ):
        expected[key] = expected.get(key, 0) + 1
    assert counts == expected


def test_a_visitor_keeps_its_variant_when_the_weights_change(client: TestClient) -> None:
    visitors = [f"visitor-{i}" for i in range(200)]
    before = {v: client.post("/v1/funnels/shop/assign", json={"visitor_id": v}).json()["variant"] for v in visitors}
    assert 60 < list(before.values()).count("B") < 140
    moved = EXPERIMENT.with_weights({"A": 0.05, "B": 0.95})
    publish(client, moved)
    after = {v: client.post("/v1/funnels/shop/assign", json={"visitor_id": v}).json() for v in visitors}
    assert all(after[v]["variant"] == before[v] and after[v]["version"] == 2 for v in visitors)
    newcomers = [
        client.post("/v1/funnels/shop/assign", json={"visitor_id": f"new-{i}"}).json()["variant"] for i in range(200)
    ]
    assert newcomers.count("B") > 170  # new visitors follow the new weights
    assigned = sum(c for (_, _, step), c in client.app.state.edge.store.funnel_counts().items() if step == ASSIGNED)
    assert assigned == 400


def test_no_running_experiment_means_no_variant_and_no_count(client: TestClient) -> None:
    publish(client, EXPERIMENT.with_status(Status.STOPPED))
    assert client.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).json()["variant"] is None
    reply = client.post("/v1/funnels/leads/events", json={"visitor_id": "v1", "step": "visit"}).json()
    assert reply == {"funnel": "leads", "experiment": None, "variant": None, "step": "visit", "counted": True}
    assert client.app.state.edge.store.funnel_counts() == {}


def test_erasure_and_retention_drop_visitor_rows_but_never_counts(client: TestClient) -> None:
    store = client.app.state.edge.store
    client.post("/v1/funnels/shop/events", json={"visitor_id": "v1", "step": "view"})
    client.post("/v1/funnels/shop/events", json={"visitor_id": "v2", "step": "view"})
    counts = store.funnel_counts()
    assert (
        client.delete("/v1/privacy/visitors/v1", headers=operator(client)).json()["erased"] == 2
    )  # its assignment and its event
    assert store.purge_older_than(0.0, now=1e12) == 2
    assert store.funnel_counts() == counts
    assert store.funnel_counts(unsynced_only=True) == counts
    store.mark_synced(counts)
    assert store.funnel_counts(unsynced_only=True) == {}


def test_the_config_survives_a_restart(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, models=("funnel",))
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).status_code == 404  # no config yet
        publish(c, EXPERIMENT)
        variant = c.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).json()["variant"]
    with TestClient(create_app(settings)) as c:  # no hub at all: the cached config is enough
        assert c.app.state.funnels.etag is not None
        assert c.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).json()["variant"] == variant
