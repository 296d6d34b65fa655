"""Config section of the Redis vector store (composed in soe.config as `redis`).

The pipeline (writer) and the rankers (reader) use the same section with different credentials:
set ``SOE_REDIS__USERNAME`` / ``SOE_REDIS__PASSWORD`` per deployment. The password is a
``SecretStr``: it prints as ``**********`` in reprs, logs and `soe config`, never in clear.
"""

from __future__ import annotations

from pydantic import SecretStr, field_validator

from core.section import Section


class RedisSettings(Section):
    mode: str = "single"  # "single" (one redis-server) or "cluster" (Redis Cluster)
    host: str = "127.0.0.1"  # single node host, or any cluster node
    port: int = 6379  # single node port, or any cluster node's port
    startup_nodes: list[str] = []  # cluster: "host:port" seeds; empty = host:port
    username: str | None = None  # ACL user (writer for the pipeline, reader for rankers)
    password: SecretStr | None = None  # never logged; prefer SOE_REDIS__PASSWORD to the YAML file
    tls: bool = False  # TLS to Redis
    tls_ca_cert: str | None = None  # CA bundle that signed the server certificate (TLS)
    tls_cert: str | None = None  # client certificate, when the server requires mutual TLS
    tls_key: str | None = None  # client key for tls_cert
    namespace: str = "soe"  # key prefix of everything SoE writes
    buckets: int = 16384  # hash buckets per model namespace, ~ expected users / 64; fixed when a namespace is created
    dtype: str = "float16"  # stored vector dtype: float16 | float32 | int8 (per-vector scale)
    publish_batch: int = 262144  # vectors read, encoded and sent per pipeline round trip
    pointer_ttl_s: float = 1.0  # lookup client: how long the current-model pointer is cached
    socket_timeout_s: float = 5.0  # per command
    max_connections: int = 32  # connection pool size per node

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("single", "cluster"):
            raise ValueError(f"redis.mode must be 'single' or 'cluster', got {v!r}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("float16", "float32", "int8"):
            raise ValueError(f"redis.dtype must be float16, float32 or int8, got {v!r}")
        return v

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: int) -> int:
        if not 1 <= v <= 2**24:
            raise ValueError(f"redis.buckets must be within [1, 2^24], got {v}")
        return v

    def secret(self) -> str | None:
        """The password in clear, for the connection only (never log the result)."""
        pw = self.password
        return pw.get_secret_value() if isinstance(pw, SecretStr) else pw

    def with_credentials(self, username: str | None, password: str | None) -> "RedisSettings":
        """A validated copy for another ACL user (``model_copy(update=...)`` would skip the SecretStr)."""
        return self.model_validate({**self.model_dump(), "username": username, "password": password})

    def __repr_args__(self):
        for name, value in super().__repr_args__():
            yield name, ("**********" if name == "password" and value is not None else value)

    def nodes(self) -> list[tuple[str, int]]:
        """The (host, port) seeds: startup_nodes, else host:port."""
        out = []
        for seed in self.startup_nodes or [f"{self.host}:{self.port}"]:
            host, _, port = seed.rpartition(":")
            out.append((host or self.host, int(port)))
        return out
