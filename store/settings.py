"""Config section of the Redis vector store (composed in soe.config as `redis`)."""

from __future__ import annotations

from soe.section import Section


class RedisSettings(Section):
    mode: str = "single"  # "single" (one redis-server) or "cluster" (Redis Cluster)
    host: str = "127.0.0.1"  # single node host, or any cluster node
    port: int = 6379  # single node port, or any cluster node's port
    startup_nodes: list[str] = []  # cluster: "host:port" seeds; empty = host:port
    username: str | None = None  # ACL user (writer for the pipeline, reader for rankers)
    password: str | None = None  # never logged; prefer SOE_REDIS__PASSWORD to the YAML file
    tls: bool = False  # TLS to Redis
    namespace: str = "soe"  # key prefix of everything SoE writes
