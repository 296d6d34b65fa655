"""The flows' own logic on small hand-made inputs: generation checks, promotion gate, retention, manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.atomic import publish_dir
from core.layout import HOUR
from soe.flows.checks import GenerationRejected, Thresholds, coverage, drift, judge, norm_stats
from soe.flows.gate import decide
from soe.flows.manifest import done_times, previous_done, read_manifest, record_run
from soe.flows.retention import apply_retention
from soe.flows.training import model_age_hours

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
THRESH = Thresholds(
    min_coverage=0.999, min_drift_cosine=0.2, min_graph_recall=0.9, min_drift_users=3, norm_tolerance=0.02
)


def unit(rng, n, d=8):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_coverage_counts_missing_expected_users():
    assert coverage(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1, 9])) == (1.0, 0)
    assert coverage(np.array([1, 2, 3, 4]), np.array([1, 2])) == (0.5, 2)
    assert coverage(np.array([], dtype=np.int64), np.array([1])) == (1.0, 0)


def test_norm_stats_flags_nan_and_unnormalised_rows():
    v = unit(np.random.default_rng(0), 5)
    v[1, 0] = np.nan
    v[3] *= 2.0
    s = norm_stats(v, 0.02)
    assert (s["non_finite_rows"], s["bad_norm_rows"], s["rows"]) == (1, 1, 5)


def test_drift_is_mean_cosine_of_common_users_in_any_order():
    rng = np.random.default_rng(1)
    a = unit(rng, 4)
    mean, n = drift(np.array([1, 2, 3, 4]), a, np.array([4, 3, 9]), np.stack([a[3], -a[2], a[0]]))
    assert n == 2 and mean == pytest.approx(0.0, abs=1e-6)  # user 4 identical (1), user 3 flipped (-1)
    assert drift(np.array([1]), a[:1], np.array([2]), a[:1]) == (None, 0)


def test_judge_passes_a_good_generation_and_names_every_failed_check():
    rng = np.random.default_rng(2)
    ids = np.arange(100)
    v = unit(rng, 100)
    good = judge(THRESH, ids, ids, v, (ids, v), graph_recall=0.97, lookup_found=(50, 50))
    assert good.ok, good.as_dict()
    bad_v = v.copy()
    bad_v[0] = np.nan
    bad = judge(
        THRESH, np.arange(200), ids, bad_v, (ids, unit(rng, 100)), graph_recall=0.5, lookup_found=(49, 50)
    )
    assert {c.name for c in bad.failures()} == {"coverage", "norms", "drift", "recall", "lookup"}
    with pytest.raises(GenerationRejected, match=r"coverage.*norms.*drift.*recall.*lookup"):
        bad.raise_if_failed("test generation")


def test_judge_skips_drift_without_enough_common_users():
    rng = np.random.default_rng(3)
    v = unit(rng, 10)
    r = judge(THRESH, np.arange(10), np.arange(10), v, (np.array([0, 1]), -v[:2]), 0.95, None)
    drift_check = next(c for c in r.checks if c.name == "drift")
    assert r.ok and "skipped" in drift_check.detail


def test_missing_recall_fails():
    v = unit(np.random.default_rng(4), 3)
    assert not judge(THRESH, np.arange(3), np.arange(3), v, None, None, None).ok


@pytest.mark.parametrize(
    "cand, cur, age, promote",
    [
        (0.30, None, None, True),  # first model
        (0.31, 0.30, 1.0, True),  # better
        (0.30, 0.30, 1.0, False),  # equal, fresh current: keep
        (0.298, 0.30, 500.0, True),  # stale current, candidate within tolerance
        (0.20, 0.30, 500.0, False),  # stale current but the candidate is clearly worse
    ],
)
def test_gate(cand, cur, age, promote):
    d = decide({"ndcg@10": cand}, None if cur is None else {"ndcg@10": cur}, age, 0.0, 168, 0.005)
    assert d.promote is promote, d.reason


def test_gate_min_gain_and_bad_metrics():
    assert not decide({"ndcg@10": 0.305}, {"ndcg@10": 0.30}, 1.0, min_ndcg_gain=0.01).promote
    assert decide({"ndcg@10": 0.31}, {"ndcg@10": 0.30}, 1.0, min_ndcg_gain=0.01).promote
    with pytest.raises(ValueError, match="ndcg@10"):
        decide({"hr@10": 0.3}, None, None)


def test_model_age_from_train_window_or_creation():
    as_of = T0
    assert model_age_hours({"train_window": "2026-01-01T00:00Z/2026-01-01T10:00Z"}, as_of) == pytest.approx(
        2.0
    )
    assert model_age_hours({"train_window": {"end": "2026-01-01T06:00Z"}}, as_of) == pytest.approx(6.0)
    assert model_age_hours({"created_at": "2026-01-01T11:00:00+00:00"}, as_of) == pytest.approx(1.0)
    assert model_age_hours({}, as_of) is None


def _snapshot(path, user_ids=(1, 2)):
    with publish_dir(path, {"n": 1}) as tmp:
        pq.write_table(pa.table({"user_id": pa.array(user_ids, pa.int64())}), tmp / "part-0.parquet")


def _embedding_snapshot(layout, model, t, user_ids):
    _snapshot(layout.embeddings(model, t) / "shard=00000", user_ids)
    (layout.embeddings(model, t) / "_SUCCESS").write_text("{}")


def test_retention_removes_expired_snapshots_but_keeps_the_newest(settings):
    layout = settings.layout()
    times = [T0 - HOUR * h for h in (0, 1, 5, 30, 60)]
    for t in times:
        _snapshot(layout.state(t))
        _snapshot(layout.active(t))
        _embedding_snapshot(layout, "v-a", t, [1, 2])
    _snapshot(layout.graph("v-old", T0 - HOUR * 100))  # an idle model: its only (newest) graph stays
    (layout.state_root / "as_of=20260101T0000Z").mkdir()  # unpublished: not a snapshot, never touched
    out = apply_retention(layout, T0, hours_to_keep=24)
    assert out["n_removed"] == 3 * 2  # 30 h and 60 h of state, active, embeddings
    for t in times:
        expired = t < T0 - timedelta(hours=24)
        assert layout.state(t).exists() is not expired
        assert layout.embeddings("v-a", t).exists() is not expired
    assert layout.graph("v-old", T0 - HOUR * 100).exists()
    assert (layout.state_root / "as_of=20260101T0000Z").exists()
    assert apply_retention(layout, T0, hours_to_keep=24)["n_removed"] == 0  # idempotent
    with pytest.raises(ValueError):
        apply_retention(layout, T0, hours_to_keep=0)


def test_retention_never_fails_on_a_corrupt_older_snapshot(settings, caplog):
    """bench.chaos: a corrupt embedding file of a done hour made every later hour's retention fail."""
    layout = settings.layout()
    _embedding_snapshot(layout, "v-a", T0 - HOUR * 50, [1, 2])
    _embedding_snapshot(layout, "v-a", T0, [1])
    bad = next(layout.embeddings("v-a", T0 - HOUR * 50).rglob("*.parquet"))
    bad.write_bytes(b"PAR1 not really")
    out = apply_retention(layout, T0, hours_to_keep=24)  # no exception
    assert str(bad) in caplog.text and "unreadable" in caplog.text
    assert out["n_removed"] == 1  # expired, and nothing readable in it to keep for anyone


def test_retention_keeps_an_expired_embedding_snapshot_while_it_holds_a_users_only_vector(settings):
    layout = settings.layout()
    _embedding_snapshot(layout, "v-a", T0 - HOUR * 90, [1, 2, 3])  # backfill: every user
    _embedding_snapshot(layout, "v-a", T0 - HOUR * 50, [1])  # expired, superseded below
    _embedding_snapshot(layout, "v-a", T0 - HOUR * 2, [1, 2])
    _embedding_snapshot(layout, "v-a", T0, [2])
    out = apply_retention(layout, T0, hours_to_keep=24)
    assert out["removed"] == [
        "embeddings/v-a/as_of=20251230T1000Z"
    ]  # T0 - 50 h; user 3 only lives at T0 - 90 h
    assert layout.embeddings("v-a", T0 - HOUR * 90).exists()


def test_retention_keeps_young_temp_dirs_of_concurrent_writers(settings):
    layout = settings.layout()
    _snapshot(layout.state(T0))
    young = layout.state_root / ".as_of=x.tmp-123"
    young.mkdir()
    assert apply_retention(layout, T0, 24)["stale_temps"] == 0 and young.exists()
    assert apply_retention(layout, T0, 24, stale_temp_hours=0.0)["stale_temps"] == 1 and not young.exists()


def test_run_manifests_count_attempts_and_find_the_previous_done_run(settings):
    layout = settings.layout()
    assert previous_done(layout, "soe_hourly", T0) is None
    for h in (2, 1):
        record_run(
            layout,
            "soe_hourly",
            T0 - HOUR * h,
            {"model_version": "v-a", "stages": {"encode": {"seconds": 1.5}}},
        )
    record_run(
        layout, "soe_hourly", T0 - HOUR, {"model_version": "v-a", "stages": {"encode": {"seconds": 2}}}
    )
    m = read_manifest(layout, "soe_hourly", T0 - HOUR)
    assert m["attempt"] == 2 and m["status"] == "done" and m["total_stage_seconds"] == 2
    assert done_times(layout, "soe_hourly") == [T0 - HOUR * 2, T0 - HOUR]
    assert previous_done(layout, "soe_hourly", T0)["as_of"] == "20260101T1100Z"
    assert previous_done(layout, "soe_hourly", T0, model_version="v-b") is None


def test_dag_interval_from_airflow_context_is_plain_utc():
    import pendulum

    from soe.flows.dag_support import interval

    start, end = interval(
        {
            "data_interval_start": pendulum.datetime(2026, 1, 2, 1, tz="UTC"),
            "data_interval_end": pendulum.datetime(2026, 1, 2, 2, tz="UTC"),
        }
    )
    assert (start, end) == (
        datetime(2026, 1, 2, 1, tzinfo=UTC),
        datetime(2026, 1, 2, 2, tzinfo=UTC),
    )
    assert (end - timedelta(hours=48)).tzinfo is not None  # pendulum arithmetic would drop the zone
    # a manual trigger's empty interval means the whole hour ending at it
    start, end = interval(
        {
            "data_interval_start": pendulum.datetime(2026, 1, 2, 2, 30, tz="UTC"),
            "data_interval_end": pendulum.datetime(2026, 1, 2, 2, 30, tz="UTC"),
        }
    )
    assert (start, end) == (
        datetime(2026, 1, 2, 1, tzinfo=UTC),
        datetime(2026, 1, 2, 2, tzinfo=UTC),
    )
