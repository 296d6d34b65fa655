"""Config section of the query service (composed in soe.config as `serve`)."""

from __future__ import annotations

from typing import Literal

from core.section import Section


class ServeSettings(Section):
    host: str = "127.0.0.1"  # bind address of `soe serve`
    port: int = 8080  # port of `soe serve`
    model_version: str | None = None  # model to serve; None = Redis current-model pointer, else newest graph
    vector_source: Literal["redis", "graph"] = "redis"  # /vectors from Redis, or from the graph snapshot
    max_batch: int = 1_000  # most user ids in one /vectors request
    max_k: int = 1_000  # most neighbours / candidates per request
    max_seeds: int = 100_000  # most seed users in one /lookalike request
    max_audience: int = 100_000  # largest lookalike audience returned over HTTP
    max_body_bytes: int = 4_000_000  # larger request bodies get 413 before parsing
    graph_reload_s: float = 60.0  # how often to look for a newer graph snapshot on disk
    # slow clients (store.service.server): a request's headers must arrive within header_timeout_s of its
    # first byte, its body within body_timeout_s of its start, else the connection is closed (0 = no limit)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    keep_alive_s: int = 5  # an idle connection between requests is closed after this
    http: Literal["auto", "h11", "httptools"] = "auto"  # uvicorn's HTTP parser (auto: httptools if installed)
