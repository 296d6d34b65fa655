"""The query service: vectors, neighbours, lookalike audiences and ad candidates over HTTP (FastAPI).

::

    GET  /health                          liveness (the process answers)
    GET  /ready                           readiness: Redis reachable (when used) and a graph loaded; else 503
    GET  /metrics                         Prometheus: requests by route/status, latency, graph size/age
    POST /v1/vectors                      {"user_ids": [...]} -> vectors (null + "missing" for unknown ids)
    GET  /v1/users/{user_id}/vector       one vector; 404 when unknown
    GET  /v1/users/{user_id}/neighbours   ?k=  the user's nearest users, best first; 404 when unknown
    GET  /v1/users/{user_id}/candidates   ?k=  items the neighbours engaged with; 404 when unknown
    POST /v1/lookalike                    {"seed_user_ids": [...], "size": n} -> audience

Every bad request is a 4xx with a readable ``detail``: malformed JSON, wrong types and oversized lists
are rejected by the schema (422), bodies over ``serve.max_body_bytes`` with 413 before parsing,
unknown users with 404; a body that does not arrive within ``serve.body_timeout_s`` is a 408 and a
closed connection (store.service.server, which also times out slow headers). Every response's
``model_version`` is the model whose records it holds: the model is resolved once per request.
A missing dependency (no graph yet, Redis down) is a 503, never a 500.
Handlers are plain ``def``: FastAPI runs them in its thread pool, so a lookalike over 1M users does
not block the event loop.
"""

import time
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from core.layout import Layout
from store.graph.settings import GraphSettings
from store.service.schemas import (
    INT64_MAX,
    INT64_MIN,
    Candidate,
    CandidatesResponse,
    LookalikeRequest,
    LookalikeResponse,
    Neighbour,
    NeighboursResponse,
    Problem,
    VectorResponse,
    VectorsRequest,
    VectorsResponse,
    request_models,
)
from store.service.server import BodyReadTimeout
from store.service.settings import ServeSettings
from store.service.state import NotReady, ServiceState
from store.settings import RedisSettings

UserPath = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX, description="int64 user id")]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (404, 413, 503)}
F = TypeVar("F", bound=Callable[..., Any])


def with_body(model: type) -> Callable[[F], F]:
    """Give a handler's ``body`` parameter the app's request model (a subclass whose limits come from
    the settings); the handler is annotated with the static base class."""

    def set_body(fn: F) -> F:
        fn.__annotations__["body"] = model
        return fn

    return set_body


def _metrics(registry: Any) -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    r = registry
    return {
        "requests": Counter("soe_http_requests", "HTTP requests", ["route", "method", "status"], registry=r),
        "latency": Histogram("soe_http_request_seconds", "HTTP request latency", ["route"], registry=r),
        "graph_users": Gauge("soe_graph_users", "users in the loaded graph", registry=r),
        "graph_as_of": Gauge("soe_graph_as_of_seconds", "as_of of the loaded graph (unix s)", registry=r),
    }


def create_app(
    serve: ServeSettings,
    gcfg: GraphSettings,
    redis: RedisSettings,
    layout: Layout,
    state: ServiceState | None = None,
) -> FastAPI:
    """The FastAPI app over the ``serve``, ``graph`` and ``redis`` sections and the data layout."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    state = state or ServiceState(serve, gcfg, redis, layout)
    req = request_models(serve, gcfg)
    registry = CollectorRegistry()  # one per app: tests create many apps in one process
    metrics = _metrics(registry)
    app = FastAPI(title="SoE query service", version="1", description=(__doc__ or "").split("::")[0].strip())
    app.state.soe = state

    @app.middleware("http")
    async def limit_and_measure(request: Request, call_next):
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            response = JSONResponse(
                {"detail": "a request body needs a Content-Length header"}, status_code=411
            )
        elif length is not None and (not length.isdigit() or int(length) > serve.max_body_bytes):
            response = JSONResponse(
                {"detail": f"request body over {serve.max_body_bytes} bytes"}, status_code=413
            )
        else:
            response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics["requests"].labels(route, request.method, str(response.status_code)).inc()
        metrics["latency"].labels(route).observe(time.perf_counter() - t0)
        return response

    # outermost of the app's middleware: a body that does not arrive in time is a 408 and a closed
    # connection (store.service.server; the header timeout is the server's protocol)
    app.add_middleware(BodyReadTimeout, timeout_s=serve.body_timeout_s)

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(LookupError)
    async def not_found(_: Request, exc: LookupError):
        return JSONResponse({"detail": str(exc).strip("'\"")}, status_code=404)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        @app.exception_handler(RedisConnectionError)
        @app.exception_handler(RedisTimeout)
        async def store_down(_: Request, exc: Exception):
            return JSONResponse(
                {"detail": f"the vector store is unavailable: {type(exc).__name__}"}, status_code=503
            )
    except ImportError:  # redis-py is a dependency; kept optional only for graph-only deployments
        pass

    @app.get("/health", tags=["ops"])
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "not ready"}})
    def ready():
        checks: dict[str, bool | str] = {}
        if serve.vector_source == "redis":
            checks["redis"] = state.store_ok()
        try:
            g = state.graph()
            checks["graph"] = True
            metrics["graph_users"].set(len(g.uv))
            from core.layout import utc

            metrics["graph_as_of"].set(utc(g.snap.manifest["as_of"]).timestamp())
        except (NotReady, OSError, ValueError) as exc:
            checks["graph"] = False
            checks["graph_error"] = str(exc)
        ok = all(v for k, v in checks.items() if isinstance(v, bool))
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/vectors", response_model=VectorsResponse, responses=ERRORS, tags=["vectors"])
    @with_body(req.vectors)
    def vectors(body: VectorsRequest):
        ids = np.asarray(body.user_ids, dtype=np.int64)
        vecs, found, model = state.vectors(ids)
        out = [v.tolist() if f else None for v, f in zip(vecs, found)]
        return VectorsResponse(model_version=model, vectors=out, missing=ids[~found].tolist())

    @app.get("/v1/users/{user_id}/vector", response_model=VectorResponse, responses=ERRORS, tags=["vectors"])
    def vector(user_id: UserPath):
        vecs, found, model = state.vectors(np.array([user_id], np.int64))
        if not found[0]:
            raise LookupError(f"user {user_id} has no vector in model {model!r}")
        return VectorResponse(user_id=user_id, model_version=model, vector=vecs[0].tolist())

    @app.get(
        "/v1/users/{user_id}/neighbours", response_model=NeighboursResponse, responses=ERRORS, tags=["graph"]
    )
    def neighbours(user_id: UserPath, k: Annotated[int, Query(ge=1, le=serve.max_k)] = gcfg.k):
        source, model = state.neighbours()  # the model is resolved once: the label is the lists' model
        (found,) = source.neighbours([user_id])
        if found is None:
            raise LookupError(f"user {user_id} has no neighbour list in model {model!r}")
        ids, scores = found
        return NeighboursResponse(
            user_id=user_id,
            model_version=model,
            neighbours=[Neighbour(user_id=int(i), score=float(s)) for i, s in zip(ids[:k], scores[:k])],
        )

    @app.get(
        "/v1/users/{user_id}/candidates", response_model=CandidatesResponse, responses=ERRORS, tags=["graph"]
    )
    def candidates(user_id: UserPath, k: Annotated[int, Query(ge=1, le=serve.max_k)] = 50):
        from store.graph.candidates import candidates as score_candidates

        source, model = state.neighbours()
        items, scores = score_candidates(user_id, k, source, state.positives())
        return CandidatesResponse(
            user_id=user_id,
            model_version=model,
            candidates=[Candidate(item_id=int(i), score=float(s)) for i, s in zip(items, scores)],
        )

    @app.post("/v1/lookalike", response_model=LookalikeResponse, responses=ERRORS, tags=["graph"])
    @with_body(req.lookalike)
    def lookalike(body: LookalikeRequest):
        from store.graph.lookalike import lookalike as expand

        g = state.graph()
        method = body.method or gcfg.lookalike_method
        aud = expand(
            g.uv,
            body.seed_user_ids,
            body.size,
            exclude_seeds=body.exclude_seeds,
            method=method,
            n_centroids=gcfg.lookalike_centroids,
            index=g.index() if method == "max_seed" else None,
            seed_k=gcfg.lookalike_seed_k,
            seed=gcfg.seed,
        )
        return LookalikeResponse(
            model_version=g.snap.model_version,
            graph_as_of=g.snap.manifest["as_of"],
            method=method,
            user_ids=aud.user_ids.tolist(),
            scores=[round(float(s), 6) for s in aud.scores],
            seeds_used=aud.n_seeds_used,
            missing_seeds=aud.missing_seeds[:1000].tolist(),
        )

    return app


def openapi_spec(serve: ServeSettings | None = None, gcfg: GraphSettings | None = None) -> dict:
    """The OpenAPI document of the app under the given (default) sections: docs/openapi.json.

    Only ``serve`` and ``graph`` shape the spec (limits, defaults); the store and the data root do not.
    """
    app = create_app(
        serve or ServeSettings(),
        gcfg or GraphSettings(),
        RedisSettings(mode="memory"),
        Layout(FsPath("data")),
    )
    return app.openapi()
