"""The one switch between the two read paths of the Redis backend: ``redis.read_path``.

``packed`` (store.wire: HMGETs packed into one RESP buffer per node) must return exactly the bytes of
``pipeline`` (redis-py's pipeline, the reference), for any set of users: present and missing ids,
duplicates, one id or many, on a single node and on a cluster. Hypothesis draws the user sets; the
in-memory backend, given the same values, must agree too.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import format as fmt
from store.backends import open_store

# present users, spread over buckets
STORED = np.unique(np.random.default_rng(3).integers(-(2**40), 2**40, 2_000))
STORED_LIST = STORED.tolist()


def fill(store, values):
    store.ensure_model("m1", 8, "float16", 256)
    store.upsert("vectors", "m1", STORED, values["vectors"], 1_000)
    store.upsert("neighbours", "m1", STORED, values["neighbours"], 1_000)
    store.upsert("positives", None, STORED, values["positives"], 1_000)


user_ids = st.one_of(st.sampled_from(STORED_LIST), st.integers(-(2**63), 2**63 - 1))
user_sets = st.one_of(
    st.lists(user_ids, min_size=1, max_size=1),  # a ranker's single lookup (one HGET)
    st.lists(user_ids, min_size=2, max_size=400),  # batches: missing users and duplicates drawn freely
    st.lists(st.sampled_from(STORED_LIST), min_size=1, max_size=50).map(lambda xs: xs + xs[::-1]),  # repeats
)


def test_packed_reads_equal_redis_py_pipeline_reads_byte_for_byte(redis_any, redis_memory):
    x = np.random.default_rng(0).standard_normal((len(STORED), 8)).astype(np.float32)
    values = {
        "vectors": fmt.encode_vectors(x, 1_000, "m1"),
        "neighbours": [fmt.encode_neighbours([i, i + 1], [0.5, 0.25], 1_000, "m1") for i in STORED_LIST],
        "positives": [fmt.encode_neighbours([i % 97], [3.0], 1_000, "positives") for i in STORED_LIST],
    }
    packed = open_store(redis_any.model_copy(update={"read_path": "packed", "buckets": 128}))
    pipeline = open_store(redis_any.model_copy(update={"read_path": "pipeline", "buckets": 128}))
    memory = open_store(redis_memory)
    assert (packed.read_path, pipeline.read_path) == ("packed", "pipeline")
    fill(packed, values)
    fill(memory, values)

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ids=user_sets, kind=st.sampled_from(["vectors", "neighbours", "positives"]))
    def check(ids, kind):
        model = None if kind == "positives" else "m1"
        got = packed.get(kind, model, ids)
        assert got == pipeline.get(kind, model, ids)
        assert got == memory.get(kind, model, ids)
        assert len(got) == len(ids)
        stored = set(STORED_LIST)
        assert [v is not None for v in got] == [i in stored for i in ids]

    check()


def test_read_path_is_a_closed_choice(redis_single):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        redis_single.model_validate({**redis_single.model_dump(), "read_path": "fast"})
    with pytest.raises(AttributeError):
        open_store(redis_single).read_path = "pipeline"  # fixed for the store's life
