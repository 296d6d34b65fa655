"""The query service over real Redis, a real graph and FastAPI's TestClient: answers and 4xx, never 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from store.graph.build import build_graph
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.redis_io import write_positives
from store.graph.snapshot import latest_snapshot
from store.service.app import create_app, openapi_spec

AS_OF = "2026-01-01T05:00Z"


def app_of(s):
    """The app over the sections of a full Settings (what `soe serve` passes)."""
    return create_app(s.serve, s.graph, s.redis, s.layout())


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted():
    return planted_vectors(PlantedConfig(n_users=2000, n_clusters=10, seed=11))


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_single_server, planted):
    """Vectors published to Redis, the graph built (Redis neighbour lists); built once per module."""
    from soe.config import load_settings
    from store.publish import publish_embeddings
    from tests.fixtures.redis_servers import _flush

    s = load_settings(environ={"SOE_DATA__ROOT": str(tmp_path_factory.mktemp("served") / "data")})
    s = s.model_copy(
        update={
            "redis": redis_single_server.redis_settings(),
            "graph": s.graph.model_copy(update={"k": 10, "recall_sample": 200}),
            "serve": s.serve.model_copy(
                update={"model_version": "m1", "max_seeds": 300, "max_batch": 50, "max_body_bytes": 20_000}
            ),
        }
    )
    _flush(s.redis)
    write_embeddings(s.layout(), "m1", AS_OF, planted.user_ids, planted.vectors)
    publish_embeddings(s.redis, s.layout(), "m1", AS_OF)
    build_graph(s.graph, s.redis, s.layout(), "m1", AS_OF)
    return s


@pytest.fixture(scope="module")
def client(served):
    return TestClient(app_of(served))


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"redis": True, "graph": True}
    client.get("/v1/users/-7/vector")
    text = client.get("/metrics").text
    assert 'soe_http_requests_total{method="GET",route="/v1/users/{user_id}/vector",status="404"} 1.0' in text
    assert "soe_graph_users 2000.0" in text


def test_not_ready_without_graph(settings):
    s = settings.model_copy(update={"serve": settings.serve.model_copy(update={"vector_source": "graph"})})
    c = TestClient(app_of(s))
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert c.post("/v1/lookalike", json={"seed_user_ids": [1]}).status_code == 503


def test_vectors(client, planted):
    uid = int(planted.user_ids[3])
    r = client.get(f"/v1/users/{uid}/vector")
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["vector"], planted.vectors[3], atol=2e-3)  # float16 in Redis
    r = client.post("/v1/vectors", json={"user_ids": [uid, -1, int(planted.user_ids[4])]})
    body = r.json()
    assert r.status_code == 200 and body["missing"] == [-1] and body["vectors"][1] is None
    np.testing.assert_allclose(body["vectors"][2], planted.vectors[4], atol=2e-3)
    assert client.get("/v1/users/123456789/vector").status_code == 404


def test_neighbours_match_the_graph(client, served, planted):
    snap = latest_snapshot(served.layout(), "m1")
    nbr, _ = snap.neighbours()
    uid = int(snap.vectors.ids[7])
    r = client.get(f"/v1/users/{uid}/neighbours", params={"k": 4})
    body = r.json()
    assert r.status_code == 200 and [n["user_id"] for n in body["neighbours"]] == nbr[7][:4].tolist()
    assert client.get(f"/v1/users/{uid}/neighbours").json()["neighbours"].__len__() == 10
    r = client.get("/v1/users/424242424/neighbours")
    assert r.status_code == 404 and "no neighbour list" in r.json()["detail"]


def test_candidates_from_neighbours_positives(client, served):
    snap = latest_snapshot(served.layout(), "m1")
    nbr, scores = snap.neighbours()
    uid, n1, n2 = int(snap.vectors.ids[0]), int(nbr[0][0]), int(nbr[0][1])
    write_positives(
        served.redis,
        np.array([uid, n1, n2]),
        [np.array([8]), np.array([7]), np.array([7, 8, 9])],
        [np.array([1.0]), np.array([2.0]), np.array([1.0, 2.0, 3.0])],
        AS_OF,
        ttl_s=None,
    )
    r = client.get(f"/v1/users/{uid}/candidates", params={"k": 5})
    got = {c["item_id"]: c["score"] for c in r.json()["candidates"]}
    assert r.status_code == 200 and set(got) == {7, 9}  # 8 is the user's own positive
    assert got[7] == pytest.approx(scores[0][0] + scores[0][1], rel=1e-5)
    assert got[9] == pytest.approx(scores[0][1], rel=1e-5)
    assert client.get("/v1/users/-3/candidates").status_code == 404


def test_lookalike_recovers_the_seed_cluster(client, planted):
    members = planted.user_ids[planted.cluster == 2]
    r = client.post("/v1/lookalike", json={"seed_user_ids": members[:40].tolist() + [-9], "size": 100})
    body = r.json()
    assert r.status_code == 200 and body["seeds_used"] == 40 and body["missing_seeds"] == [-9]
    assert np.isin(body["user_ids"], members[40:]).mean() >= 0.95
    for method in ("centroid", "max_seed"):
        body = {"seed_user_ids": members[:40].tolist(), "size": 50, "method": method}
        r = client.post("/v1/lookalike", json=body)
        assert r.status_code == 200 and np.isin(r.json()["user_ids"], members[40:]).mean() >= 0.95
    r = client.post("/v1/lookalike", json={"seed_user_ids": [-1, -2]})
    assert r.status_code == 404 and "none of the 2 seed users" in r.json()["detail"]


@pytest.mark.parametrize(
    "method,path,kwargs,status",
    [
        (
            "post",
            "/v1/vectors",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("post", "/v1/vectors", {"json": {"user_ids": "1,2"}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": ["1"]}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": [1.5]}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": [True]}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": [2**70]}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": []}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": list(range(51))}}, 422),
        ("post", "/v1/vectors", {"json": {"user_ids": [1], "extra": 1}}, 422),
        ("post", "/v1/vectors", {"json": [1, 2]}, 422),
        ("post", "/v1/lookalike", {"json": {"seed_user_ids": list(range(301))}}, 422),
        (
            "post",
            "/v1/lookalike",
            {
                "content": json.dumps({"seed_user_ids": list(range(10_000))}),
                "headers": {"content-type": "application/json"},
            },
            413,
        ),
        ("post", "/v1/lookalike", {"json": {"seed_user_ids": [1], "size": 0}}, 422),
        ("post", "/v1/lookalike", {"json": {"seed_user_ids": [1], "size": "ten"}}, 422),
        ("post", "/v1/lookalike", {"json": {"seed_user_ids": [1], "method": "magic"}}, 422),
        ("get", "/v1/users/abc/vector", {}, 422),
        ("get", f"/v1/users/{2**64}/neighbours", {}, 422),
        ("get", "/v1/users/1/neighbours?k=0", {}, 422),
        ("get", "/v1/users/1/neighbours?k=100000", {}, 422),
        ("get", "/v1/users/1/candidates?k=x", {}, 422),
        ("get", "/v1/nowhere", {}, 404),
    ],
)
def test_bad_requests_get_clear_4xx(client, method, path, kwargs, status):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_store_down_is_503_not_500(served):
    down = served.redis.model_copy(update={"port": 1, "socket_timeout_s": 0.5})
    s = served.model_copy(update={"redis": down})
    c = TestClient(app_of(s), raise_server_exceptions=False)
    r = c.get("/v1/users/1/vector")
    assert r.status_code == 503 and "unavailable" in r.json()["detail"]
    assert c.get("/ready").json()["checks"]["redis"] is False


def test_committed_openapi_spec_is_current():
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_spec())), (
        "regenerate: soe serve --openapi docs/openapi.json"
    )


def test_service_over_the_in_memory_store(settings, redis_memory, planted):
    """``redis.mode: memory``: publish, graph and service share one in-process store, no server."""
    from store.publish import publish_embeddings

    s = settings.model_copy(
        update={
            "redis": redis_memory,
            "graph": settings.graph.model_copy(update={"k": 5, "recall_sample": 100}),
            "serve": settings.serve.model_copy(update={"model_version": "m1"}),
        }
    )
    ids, vectors = planted.user_ids[:300], planted.vectors[:300]
    write_embeddings(s.layout(), "m1", AS_OF, ids, vectors)
    assert publish_embeddings(s.redis, s.layout(), "m1", AS_OF)["written"] == 300
    build_graph(s.graph, s.redis, s.layout(), "m1", AS_OF)
    c = TestClient(app_of(s))
    assert c.get("/ready").json()["checks"] == {"redis": True, "graph": True}
    body = c.post("/v1/vectors", json={"user_ids": [int(ids[3]), -1]}).json()
    np.testing.assert_allclose(body["vectors"][0], vectors[3], atol=2e-3)
    assert body["missing"] == [-1] and body["vectors"][1] is None
    r = c.get(f"/v1/users/{int(ids[3])}/neighbours", params={"k": 3})
    assert r.status_code == 200 and len(r.json()["neighbours"]) == 3
