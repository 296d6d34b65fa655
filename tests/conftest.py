"""Shared pytest setup. Fixtures of real servers live in their own plugin modules, one per component."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.redis_servers",  # real redis-server: single node and a 3-master cluster (store)
    "tests.fixtures.spark",  # one real local Spark session per test run (pipelines)
    "tests.fixtures.spark_standalone",  # real Spark standalone master + worker on loopback (spark-submit)
    "tests.fixtures.airflow",  # a throw-away PostgreSQL metadata DB for real Airflow deployments (flows)
]


@pytest.fixture
def redis_memory():
    """RedisSettings (mode "memory") of a fresh in-process store (own namespace, discarded after the test)."""
    import uuid

    from store.backends.memory import MemoryVectorStore
    from store.settings import RedisSettings

    namespace = f"t{uuid.uuid4().hex[:12]}"
    yield RedisSettings(mode="memory", namespace=namespace)
    MemoryVectorStore.discard(namespace)


@pytest.fixture(params=["memory", "single", "cluster"])
def store_any(request):
    """Every store backend in turn (RedisSettings): in-memory, a real single node, a real 3-master cluster."""
    return request.getfixturevalue(f"redis_{request.param}")


@pytest.fixture
def settings(tmp_path):
    """Default settings with the data root in a fresh temp dir."""
    from soe.config import load_settings

    return load_settings(environ={"SOE_DATA__ROOT": str(tmp_path / "data")})
