"""bench.world writes the state snapshot directly (no Spark, for 10M-user setups): its sequences must be
exactly what the sequence pipeline's specification keeps (tests/test_pipelines_reference.py)."""

from __future__ import annotations

from bench.world import T0, WorldShape, hour_events, sequences_of
from core.datasets.synthetic import USER_ID_BASE, SyntheticConfig, generate
from core.layout import Layout
from core.sequence_state import StateSnapshot
from encoder.inference.sample import write_state_snapshot
from tests.test_pipelines_reference import read_sequences, sort_key, table_events


def test_world_sequences_are_the_newest_n_events_per_user_in_event_order(tmp_path):
    log = generate(SyntheticConfig(n_users=300, n_items=500, hours=12, seed=4))
    max_len = 7
    expected: dict[int, list[tuple]] = {}
    for user, event in table_events(log.events):
        expected.setdefault(user, []).append(event)
    expected = {u: sorted(ev, key=sort_key)[-max_len:] for u, ev in expected.items()}

    table = sequences_of(log.events, T0, max_len)
    assert table["n_events"].to_pylist() == [len(expected[u]) for u in table["user_id"].to_pylist()]
    write_state_snapshot(Layout(tmp_path), T0, table, num_files=2)
    snap = StateSnapshot(Layout(tmp_path).state(T0))
    assert snap.num_users == len(expected)
    assert read_sequences(snap.path) == expected


def test_the_hour_comes_from_the_chosen_share_of_the_same_users():
    shape = WorldShape(known_users=2_000, active_users=200, n_items=1_000, n_clusters=5, slice_users=1_000)
    events = hour_events(shape, 1_000, 1_000, T0, 100)
    users = set(events["user_id"].to_pylist())
    assert 90 <= len(users) <= 100  # a user's only session may run past the hour's end
    assert min(users) >= USER_ID_BASE + 1_000 and max(users) < USER_ID_BASE + 2_000
    ts = events["ts"].cast("int64").to_numpy()
    assert ts.min() >= T0.timestamp() * 1000 and ts.max() < T0.timestamp() * 1000 + 3_600_000


def test_a_later_hour_draws_other_active_users_of_the_same_world():
    from core.layout import HOUR

    shape = WorldShape(known_users=2_000, active_users=200, n_items=1_000, n_clusters=5, slice_users=1_000)
    first = set(hour_events(shape, 0, 1_000, T0, 100)["user_id"].to_pylist())
    assert first == set(hour_events(shape, 0, 1_000, T0, 100)["user_id"].to_pylist())  # cached hours stay
    later = hour_events(shape, 0, 1_000, T0 + 2 * HOUR, 100, draw=2)
    users = set(later["user_id"].to_pylist())
    assert 90 <= len(users) <= 100 and max(users) < USER_ID_BASE + 1_000
    assert len(users & first) < 40  # another draw: ~10 % of them active in both hours
    ts = later["ts"].cast("int64").to_numpy()
    start = (T0 + 2 * HOUR).timestamp() * 1000
    assert ts.min() >= start and ts.max() < start + 3_600_000
