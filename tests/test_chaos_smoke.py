"""The chaos campaign's harness stays tested: its independent model of what readers should see, and
two of its cheapest cases (a crashed writer's leftovers; redis-server killed right after an hour)
through the same code as ``python -m bench.chaos``, on a tiny world without Spark.

The world: a random model's embedding snapshot written as a done backfill (encoder + publish, as the
backfill does, from a hand-made state), a persistent redis-server. No Spark: the cases here do not
run an hour; `bench.chaos` runs the rest.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bench import faults

pytestmark = pytest.mark.timeout(120)


def write_done_generation(root, model: str, as_of: str, ids, vecs, dag="soe_backfill", switch=True):
    """A done generation as the flows leave it on disk: complete shards and the run manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.contracts import embedding_contract
    from core.layout import utc

    shard = root / "embeddings" / model / f"as_of={as_of}" / "shard=00000"
    shard.mkdir(parents=True)
    schema = embedding_contract(vecs.shape[1]).schema
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).ravel()), vecs.shape[1])
    n = len(ids)
    table = pa.table(
        [
            pa.array(ids, pa.int64()),
            vec,
            pa.array([model] * n),
            pa.array([utc(as_of)] * n, schema.field("as_of").type),
            pa.array([1] * n, pa.int32()),
        ],
        schema=schema,
    )
    pq.write_table(table, shard / "part-00000.parquet")
    (shard / "_SUCCESS").write_text("{}")
    (shard.parent / "_SUCCESS").write_text("{}")
    m = root / "manifests" / dag / f"as_of={as_of}.json"
    m.parent.mkdir(parents=True, exist_ok=True)
    stages = {"switch": {"current": model}} if switch else {}
    m.write_text(json.dumps({"model_version": model, "as_of": as_of, "stages": stages}))


def unit(n, d, seed):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_expected_view_newest_done_wins_and_classifies_reads(tmp_path):
    ids = np.arange(1, 6)
    a, b = unit(5, 8, 0), unit(5, 8, 1)
    write_done_generation(tmp_path, "m1", "20260101T0100Z", ids, a)
    write_done_generation(tmp_path, "m1", "20260101T0200Z", ids[:2], b[:2], dag="soe_hourly", switch=False)
    exp = faults.expected_view(tmp_path)
    assert exp.current == "m1" and exp.done["m1"] == ["20260101T0100Z", "20260101T0200Z"]
    assert faults.same(exp.vectors["m1"][1][1], b[0]) and faults.same(exp.vectors["m1"][3][1], a[2])
    assert faults.classify(exp, "m1", 1, b[0], {}) is None
    assert faults.classify(exp, "m1", 1, a[0], {}) == "older"
    assert faults.classify(exp, "m1", 1, None, {}) == "missing"
    assert faults.classify(exp, "m2", 1, b[0], {}) == "wrong_model"
    assert faults.classify(exp, "m1", 99, a[0], {}) == "unexpected"
    assert faults.classify(exp, "m1", 3, b[4], {3: [b[4]]}) == "rejected"
    assert faults.classify(exp, "m1", 3, unit(1, 8, 7)[0], {}) == "mixed"


@pytest.fixture
def campaign(tmp_path):
    from bench.chaos import Campaign

    c = Campaign(tmp_path, users=5, quick=True)
    try:
        yield from _seeded(c)
    finally:
        c.close()


def _seeded(c):
    from store.publish import publish_embeddings

    ids = np.arange(10_000_001, 10_000_041)
    write_done_generation(c.root, "m1", "20260101T0200Z", ids, unit(40, 16, 3))
    c.model_a = "m1"
    from core.layout import utc
    from store.models import switch_current

    publish_embeddings(c.settings.redis, c.settings.layout(), "m1", utc("2026-01-01T02:00Z"), shard=None)
    switch_current(c.settings.redis, "m1")
    yield c


def test_the_cheapest_cases_through_the_campaign_code(campaign, monkeypatch):
    c = campaign
    assert c.judge()["wrong"] == 0 and c.judge()["users"] == 40
    runs = []
    monkeypatch.setattr(
        c,
        "run",
        lambda start, end, settings=None, on_stage=None: runs.append(end) or {"ok": True, "seconds": 0.0},
    )  # no Spark here: the hour itself is bench.chaos's
    c.case("kill9_redis_after_hour", c.kill_redis_after_hour)
    rec = c.cases["kill9_redis_after_hour"]
    assert "harness_error" not in rec, rec
    assert rec["wrong_reads"] == 0 and rec["blocked"] == 0 and len(runs) == 1
    t0 = time.perf_counter()
    c.case("crash_leftover_temp_dirs", c.leftovers)
    rec = c.cases["crash_leftover_temp_dirs"]
    assert "harness_error" not in rec and rec["fault"]["leftovers"] == 10 and rec["wrong_reads"] == 0
    assert time.perf_counter() - t0 < 30


def test_a_wrong_store_is_seen(campaign):
    """The harness is not blind: a vector overwritten in the store is a wrong read."""
    from core.layout import utc
    from store.publish import publish_embeddings

    c = campaign
    ids = np.arange(10_000_001, 10_000_011)
    write_done_generation(
        c.root, "m1", "20260101T0300Z", ids, unit(10, 16, 4), dag="soe_hourly", switch=False
    )
    (c.root / "manifests" / "soe_hourly" / "as_of=20260101T0300Z.json").rename(c.work / "not-done.json")
    publish_embeddings(c.settings.redis, c.settings.layout(), "m1", utc("2026-01-01T03:00Z"), shard=None)
    j = c.judge()
    assert j["wrong"] == 0 and j["pending"] == 10  # a complete snapshot not yet done: newer, counted apart
    c.forgotten.add(int(ids[0]))
    assert c.forgotten_where() == {"store": 1, "disk_embeddings": 1}


def test_a_corrupt_shard_of_the_previous_done_hour_does_not_block_the_next(tmp_path):
    """Found by bench.chaos (corrupt_done_shard): the drift check read the previous done generation and
    an unreadable shard (ArrowInvalid) failed every later hour; now drift is not judged and it says so."""
    from core.layout import utc
    from soe.config import load_settings
    from soe.flows import hourly

    s = load_settings(environ={"SOE_DATA__ROOT": str(tmp_path), "SOE_ORCHESTRATION__MIN_DRIFT_USERS": "1"})
    ids = np.arange(10_000_001, 10_000_021)
    write_done_generation(
        tmp_path, "m1", "20260101T0200Z", ids, unit(20, 16, 1), dag="soe_hourly", switch=False
    )
    write_done_generation(
        tmp_path, "m1", "20260101T0300Z", ids, unit(20, 16, 2), dag="soe_hourly", switch=False
    )
    (tmp_path / "manifests" / "soe_hourly" / "as_of=20260101T0300Z.json").unlink()  # this hour: not done yet
    (tmp_path / "embeddings" / "m1" / "as_of=20260101T0300Z" / "_SUCCESS").unlink()
    faults.corrupt(
        tmp_path / "embeddings" / "m1" / "as_of=20260101T0200Z" / "shard=00000" / "part-00000.parquet"
    )
    out = hourly.validate_vectors(s, "m1", utc("2026-01-01T03:00Z"), 1, expected_ids=ids)
    assert out["ok"] and out["vectors"] == 20
