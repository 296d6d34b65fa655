"""The synthetic generator: deterministic, contract-conforming, with the planted structure it promises."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.contracts import EVENT
from core.datasets.events import published_partitions
from core.datasets.synthetic import ITEM_ID_BASE, USER_ID_BASE, SyntheticConfig, generate, write_log
from core.layout import HOUR_MS, Layout

SMALL = SyntheticConfig(n_users=2000, n_items=5000, n_clusters=10, hours=6, seed=7)


@pytest.fixture(scope="module")
def log():
    return generate(SMALL)


def digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def test_same_seed_writes_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        write_log(generate(SMALL), Layout(tmp_path / name))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert not other.events.equals(generate(SMALL).events)


def test_written_partitions_follow_the_event_contract(tmp_path, log):
    layout = Layout(tmp_path)
    write_log(log, layout)
    parts = published_partitions(layout)
    assert len(parts) == SMALL.hours
    total = 0
    for part in parts:
        t = pq.read_table(part / "part-00000.parquet")
        assert t.schema.equals(EVENT.schema, check_metadata=False)
        total += t.num_rows
    assert total == log.events.num_rows
    assert (layout.ground_truth / "users.parquet").is_file() and (
        layout.ground_truth / "items.parquet"
    ).is_file()


def test_funnel_rates_are_realistic(log):
    m = log.manifest
    assert 0.02 <= m["ctr"] <= 0.05, m["ctr"]
    assert 0.05 <= m["cvr"] <= 0.10, m["cvr"]
    counts = m["event_type_counts"]
    assert counts["view"] > 0 and counts["search"] > 0


def test_item_popularity_is_zipf_like(log):
    counts = np.sort(pc.value_counts(log.events["item_id"]).field("counts").to_numpy())[::-1]
    ranks = np.arange(1, len(counts) + 1)
    top = slice(0, 200)
    slope = np.polyfit(np.log(ranks[top]), np.log(counts[top]), 1)[0]
    assert -1.6 < slope < -0.5, slope  # a power law, not uniform (slope ~0)


def test_user_activity_is_heavy_tailed(log):
    per_user = pc.value_counts(log.events["user_id"]).field("counts").to_numpy()
    assert per_user.max() > 10 * np.median(per_user)


def test_engagement_follows_planted_interest_clusters(log):
    users = log.users.to_pandas().set_index("user_id")
    item_cluster = log.items["cluster"].to_numpy()
    ev = log.events.filter(
        pc.is_in(log.events["event_type"], value_set=__import__("pyarrow").array(["click", "view"]))
    )
    uid = ev["user_id"].to_numpy() - USER_ID_BASE
    cl = item_cluster[ev["item_id"].to_numpy() - ITEM_ID_BASE]
    clusters = log.users["clusters"].to_pylist()
    inside = np.mean([c in clusters[u] for u, c in zip(uid, cl)])
    assert inside > 0.8, inside  # random would be ~2/10
    assert set(users["clusters"].map(len)) == {1, 2, 3}


def test_sessions_are_bursty(log):
    t = log.events.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    uid = t["user_id"].to_numpy()
    ts = t["ts"].cast("int64").to_numpy()
    gaps = np.diff(ts)[np.diff(uid) == 0] / 1000.0
    assert np.median(gaps) < 120  # most gaps are within a session: seconds to minutes
    assert np.quantile(gaps, 0.99) > 1800  # while sessions are hours apart


def test_late_arrivals_land_in_a_later_partition(log):
    event_hour = log.events["ts"].cast("int64").to_numpy() // HOUR_MS
    late = log.arrival_hour > event_hour
    assert 0.002 < late.mean() < 0.03


def test_user_slices_share_the_catalogue_and_keep_their_users_across_configs():
    """A population generated in slices (``user_offset``): one catalogue, disjoint user ids, and a
    slice's users keep their planted interests whatever the time window (history vs one later hour)."""
    base = dict(n_users=300, n_items=2_000, n_clusters=8, seed=3)
    history = generate(SyntheticConfig(**base, user_offset=1_000, hours=6))
    hour = generate(
        SyntheticConfig(
            **base, user_offset=1_000, hours=1, start="2026-01-01T06:00:00Z", base_events_per_user=4.0
        )
    )
    other = generate(SyntheticConfig(**base, user_offset=2_000, hours=6))
    first = generate(SyntheticConfig(**base, hours=6))
    assert history.items.equals(first.items) and other.items.equals(first.items)
    assert history.users.equals(hour.users)  # same users, same clusters
    ids = history.users["user_id"].to_numpy()
    assert ids.min() == USER_ID_BASE + 1_000 and ids.max() == USER_ID_BASE + 1_299
    assert not set(ids) & set(other.users["user_id"].to_numpy())
    assert set(history.events["user_id"].to_numpy()) <= set(ids)
    assert not history.users["clusters"].equals(other.users["clusters"])  # own draws per slice


def _same_interest_share(g) -> float:
    """Of the views that follow a user's previous view within a minute (one session), the share from
    the same planted cluster, over users with more than one interest."""
    t = g.events.filter(pc.equal(g.events["event_type"], "view"))
    t = t.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    uid = t["user_id"].to_numpy()
    ts = t["ts"].cast("int64").to_numpy()
    cl = g.items["cluster"].to_numpy()[t["item_id"].to_numpy() - ITEM_ID_BASE]
    several = np.array([len(c) > 1 for c in g.users["clusters"].to_pylist()])[uid - USER_ID_BASE]
    pair = (np.diff(uid) == 0) & (np.diff(ts) < 60_000) & several[1:]
    return float(np.mean(cl[1:][pair] == cl[:-1][pair]))


def test_session_focus_keeps_a_session_on_one_interest(log):
    """``session_focus``: a session's interest draws take one of the user's interests, so views close in
    time share a cluster more often than independent draws do; the users and their activity stay."""
    focused = generate(replace(SMALL, session_focus=1.0))
    assert focused.users.equals(log.users)
    assert _same_interest_share(focused) > _same_interest_share(log) + 0.15
    base_types = ["impression", "view", "search"]  # their times do not depend on the items drawn

    def base_times(g):
        t = g.events.filter(pc.is_in(g.events["event_type"], value_set=pa.array(base_types)))
        return np.sort(t["ts"].cast("int64").to_numpy())

    assert np.array_equal(base_times(focused), base_times(log))
