"""Config section of the vector store (composed in soe.config as `redis`).

``mode`` chooses the backend (`store.backends.open_store`): ``single`` (one redis-server),
``cluster`` (Redis Cluster) or ``memory`` (an in-process store with the same rules and value bytes,
for tests and offline runs; every `open_store` of one process and namespace shares it).

The pipeline (writer) and the rankers (reader) use the same section with different credentials:
set ``SOE_REDIS__USERNAME`` / ``SOE_REDIS__PASSWORD`` per deployment. The password is a
``SecretStr``: it prints as ``**********`` in reprs, logs and `soe config`, never in clear. A password
that YAML reads as a number or a date (``SOE_REDIS__PASSWORD=20240229``) is taken as its text; one that
YAML reads as a boolean (``yes``, ``off``) is refused: quote it. Validation errors never quote it.

``max_dim``, ``max_neighbours`` and ``max_positives`` bound the values the store accepts: the Python
side refuses larger ones before sending, and the Redis function library (store.functions) is loaded
with the same limits, so a writer cannot store larger values by calling the functions directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator

from core.section import Section

StoreMode = Literal["single", "cluster", "memory"]
VectorDtype = Literal["float16", "float32", "int8"]
ReadPath = Literal["packed", "pipeline"]


class RedisSettings(Section):
    # a validation error of this section never quotes its input (it may be the password)
    model_config = ConfigDict(**Section.model_config, hide_input_in_errors=True)

    mode: StoreMode = "single"  # backend: one redis-server, Redis Cluster, or in-process memory
    host: str = "127.0.0.1"  # single node host, or any cluster node
    port: int = 6379  # single node port, or any cluster node's port
    startup_nodes: list[str] = Field(default_factory=list)  # cluster: "host:port" seeds; empty = host:port
    username: str | None = None  # ACL user (writer for the pipeline, reader for rankers)
    password: SecretStr | None = None  # never logged; prefer SOE_REDIS__PASSWORD to the YAML file
    tls: bool = False  # TLS to Redis
    tls_ca_cert: str | None = None  # CA bundle that signed the server certificate (TLS)
    tls_cert: str | None = None  # client certificate, when the server requires mutual TLS
    tls_key: str | None = None  # client key for tls_cert
    namespace: str = "soe"  # key prefix of everything SoE writes
    # hash buckets per model namespace, ~ expected users / 64; fixed when a namespace is created
    buckets: Annotated[int, Field(ge=1, le=2**24)] = 16384
    dtype: VectorDtype = "float16"  # stored vector dtype (int8: per-vector scale)
    publish_batch: int = 262144  # vectors read, encoded and sent per pipeline round trip
    pointer_ttl_s: float = 1.0  # lookup client: how long the current-model pointer is cached
    socket_timeout_s: float = 5.0  # per command
    max_connections: int = 32  # connection pool size per node
    # cluster: how long a command or pipeline keeps retrying (with backoff, refreshing the slot map)
    # through a master's failover before it raises; > cluster-node-timeout + the replica's election
    failover_retry_s: Annotated[float, Field(ge=0)] = 15.0
    # batched reads: "packed" = HMGETs packed into one RESP buffer per node (store.wire, the fast path);
    # "pipeline" = redis-py's pipeline (the reference path; also the fallback of "packed" on MOVED/ASK
    # or a dropped connection). Both return the same bytes (tests/test_store_read_paths.py).
    read_path: ReadPath = "packed"
    # largest values accepted (checked in Python and by the Redis functions, store.functions)
    max_dim: Annotated[int, Field(ge=1, le=65535)] = 2048  # vector dim
    max_neighbours: Annotated[int, Field(ge=1, le=65535)] = 1000  # entries of a neighbour list
    max_positives: Annotated[int, Field(ge=1, le=65535)] = 1000  # entries of a recent-positives list

    @field_validator("password", mode="before")
    @classmethod
    def _password_as_text(cls, value: Any) -> Any:
        """A password is text, whatever YAML made of it (the value never appears in the error)."""
        if isinstance(value, bool):
            raise ValueError("a password must be text: YAML read this one as a boolean (quote it)")
        if isinstance(value, int | float | date | datetime | time):
            return str(value)
        return value

    def secret(self) -> str | None:
        """The password in clear, for the connection only (never log the result)."""
        pw = self.password
        return pw.get_secret_value() if isinstance(pw, SecretStr) else pw

    def with_credentials(self, username: str | None, password: str | None) -> RedisSettings:
        """A validated copy for another ACL user (``model_copy(update=...)`` would skip the SecretStr)."""
        return self.model_validate({**self.model_dump(), "username": username, "password": password})

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, ("**********" if name == "password" and value is not None else value)

    def nodes(self) -> list[tuple[str, int]]:
        """The (host, port) seeds: startup_nodes, else host:port."""
        out = []
        for seed in self.startup_nodes or [f"{self.host}:{self.port}"]:
            host, _, port = seed.rpartition(":")
            out.append((host or self.host, int(port)))
        return out
