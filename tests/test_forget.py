"""Forget means gone everywhere, and stays gone (issue 13, item 4).

A tiny real world (150 synthetic users, local Spark, a real redis-server, a random model backfilled as
the current one at T0). Each test first reproduces the finding, then shows it holds:

* ``soe forget U`` (the typer app): tombstone first, then U has no vector, no list, no positives, is in
  no other user's list (store and served graph) and is no lookalike seed;
* the next hourly refresh re-creates U nowhere (U's new events are quarantined as ``forgotten``, with
  no value kept) and drops V, a user with only a tombstone and no new event, from the state, the
  graph's index and every list (an incremental build);
* after that run's retention no snapshot on disk holds U or V.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.forget import ForgetList, forgotten_ids, read_tombstones, record_tombstones
from core.layout import HOUR, utc
from soe.flows import stages

START = utc("2026-01-01T00:00Z")
T0 = START + HOUR * 2  # bootstrap state + backfill
H1 = T0 + HOUR  # one hourly run: events of [T0, H1)
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from bench.refresh import random_model
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.flows import backfill, hourly
    from store import local_server
    from tests.test_trust import settings_for

    tmp = tmp_path_factory.mktemp("forget")
    server = local_server.start_single(tmp / "redis", persist=False)
    s = settings_for(tmp / "data", server.redis_settings(buckets=32))
    s.graph.max_incremental_fraction = 1.0  # a tiny world: every hour touches most users, stay incremental
    write_log(
        generate(
            SyntheticConfig(
                n_users=150,
                n_items=500,
                n_clusters=4,
                hours=4,
                start=str(START),
                base_events_per_user=25,
                seed=7,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, T0 - HOUR, T0)
    model = random_model(s)
    backfill.run_backfill(s, model, T0)
    yield {"settings": s, "model": model, "server": server}
    local_server.stop(server.work_dir)


def cli(world, *args, code=0):
    from soe.cli.app import app

    s = world["settings"]
    env = {
        "SOE_DATA__ROOT": str(s.data.root),
        "SOE_REDIS__HOST": s.redis.host,
        "SOE_REDIS__PORT": str(s.redis.port),
        "SOE_REDIS__BUCKETS": str(s.redis.buckets),
    }
    res = CliRunner().invoke(app, list(args), env=env)
    assert res.exit_code == code, (res.exit_code, res.output)
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else None


def listed_by(lists, user: int) -> int:
    """How many neighbour lists name ``user``."""
    return sum(1 for x in lists if x is not None and user in set(x[0].tolist()))


def everywhere_on_disk(s, user: int) -> list[str]:
    """Every file under the data root (but the raw event log, the forget list and the synthetic generator's
    planted truth) that holds ``user``."""
    root = s.layout().root
    found = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        skipped = ("events", "forget", "redis", "models", "manifests", "metrics", "ground_truth")
        if not f.is_file() or rel.parts[0] in skipped:
            continue
        if f.suffix == ".parquet":
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            col = "user_id" if "user_id" in names else None
            if col is None:
                continue
            values = pq.read_table(f, columns=[col]).column(col).to_pylist()
            if user in values or str(user) in values:
                found.append(str(rel))
            if "neighbor_ids" in names:
                lists = pq.read_table(f, columns=["neighbor_ids"]).column("neighbor_ids").combine_chunks()
                if user in lists.flatten().to_pylist():
                    found.append(f"{rel} (lists)")
        elif f.name == "ids.npy" and user in np.load(f):
            found.append(str(rel))
        elif f.name == "index.faiss":
            import faiss

            index = faiss.downcast_index(faiss.read_index(str(f)))  # a tiny world: IDMap2,Flat
            if user in faiss.vector_to_array(index.id_map):
                found.append(f"{rel} (index)")
    return found


@pytest.fixture(scope="module")
def chosen(world):
    """U: known at T0, named in many lists, with events arriving in [T0, H1). V: known, in lists, none."""
    from core.datasets.events import read_partition

    s, model = world["settings"], world["model"]
    known = np.sort(stages.state_user_ids(s, T0))
    lists = stages.neighbours(s, model, known)
    mentions = {int(u): listed_by(lists, int(u)) for u in known}
    arriving = set(read_partition(s.layout().event_partition(T0)).column("user_id").to_pylist())
    u = max((x for x in mentions if x in arriving), key=lambda x: (mentions[x], -x))
    v = max((x for x in mentions if x not in arriving), key=lambda x: (mentions[x], -x))
    return {"U": u, "V": v, "known": known, "mentions": mentions}


def test_tombstones_are_append_only_and_merged(tmp_path):
    assert len(forgotten_ids(tmp_path)) == 0 and ForgetList.load(tmp_path).digest == "none"
    record_tombstones(tmp_path, [5, 3], utc("2026-01-02T00:00Z"))
    record_tombstones(tmp_path, [3, 9], utc("2026-01-01T00:00Z"))
    t = read_tombstones(tmp_path)
    assert t["user_id"].to_pylist() == [3, 5, 9]
    assert t["requested_at"].to_pylist()[0] == utc("2026-01-01T00:00Z")  # the earliest request of 3
    assert not list((tmp_path / "forget").glob(".*"))  # no temp file left


@pytest.mark.slow  # the world (Spark bootstrap + backfill + one hour): 3-4.5 min
def test_soe_forget_removes_the_user_from_the_store_and_the_served_graph(world, chosen):
    from store.graph.redis_io import read_positives
    from store.graph.snapshot import latest_snapshot
    from store.service.state import ServiceState

    s, model, u = world["settings"], world["model"], chosen["U"]
    known = chosen["known"]
    # the finding: U has a vector, positives are readable, and U is in other users' lists (store and graph)
    assert stages.lookup(s, [u])[2][0]
    assert listed_by(stages.neighbours(s, model, known), u) >= 3
    snap = latest_snapshot(s.layout(), model)
    assert u in snap.vectors.ids and (snap.neighbours()[0] == u).any()
    before = stages.lookalike(s, model, np.array([u]), 10)[0]
    assert len(before)  # U works as a lookalike seed

    out = cli(world, "forget", str(u))
    assert out["tombstones"] and u in forgotten_ids(s.layout().root)
    assert out["removed"][f"v:{model}"] == 1 and out["graphs"][model]["relisted"] >= 3

    assert not stages.lookup(s, [u])[2][0]  # no vector
    lists = stages.neighbours(s, model, known)
    assert lists[int(np.searchsorted(known, u))] is None and listed_by(lists, u) == 0  # store lists
    others = [x for x in lists if x is not None]
    assert min(len(x[0]) for x in others) == s.graph.k  # re-searched: still full lists
    assert len(read_positives(s.redis, [u], 1e9)[0]) == 0
    snap = latest_snapshot(s.layout(), model)
    assert u not in snap.vectors.ids and not (snap.neighbours()[0] == u).any()  # served graph
    with pytest.raises(LookupError):
        stages.lookalike(s, model, np.array([u]), 10)
    other = np.array([x for x in known[:20] if x != u])
    assert u not in stages.lookalike(s, model, other, 100)[0]
    service = ServiceState(s.serve, s.graph, s.redis, s.layout())
    g = service.graph()
    assert u not in g.uv.ids and not (g.nbr_ids == u).any()
    assert cli(world, "forget", str(u))["total"] == 0  # idempotent


@pytest.mark.slow  # the world (Spark bootstrap + backfill + one hour): 3-4.5 min
def test_the_next_hour_re_creates_nothing_and_retention_purges_every_snapshot(world, chosen):
    from core.datasets.events import validate_partitions
    from core.sequence_state import StateSnapshot
    from soe.flows import hourly
    from store.graph.redis_io import read_positives
    from store.graph.snapshot import GraphSnapshot

    s, model, u, v = world["settings"], world["model"], chosen["U"], chosen["V"]
    layout = s.layout()
    # V: only a tombstone (as if `soe forget` died right after it): every stage must still honour it
    record_tombstones(layout.root, [v])
    assert everywhere_on_disk(s, u) and everywhere_on_disk(s, v)  # the finding: old snapshots hold both
    report = validate_partitions(layout, s.events, f"{T0.isoformat()}/{H1.isoformat()}")
    assert report["reasons"].get("forgotten", 0) >= 1  # `soe validate` path

    out = hourly.run_interval(s, T0, H1)
    seq = out["stages"]["sequences"]
    assert seq["reasons"]["forgotten"] == report["reasons"]["forgotten"]  # the Spark path: same count
    q = pq.read_table(sorted(layout.quarantine(H1).glob("*.parquet"))[0])
    gone = q.filter(pc.equal(q["reason"], "forgotten"))
    assert gone.num_rows and all(gone[c].null_count == gone.num_rows for c in ("user_id", "ts", "item_id"))
    state = StateSnapshot(layout.state(H1))
    assert u not in state.user_ids() and v not in state.user_ids()  # V had no new event
    assert u not in stages.active_user_ids(s, H1)
    g = GraphSnapshot(layout.graph(model, H1))
    assert g.manifest["mode"] == "incremental" and g.manifest["n_forgotten"] == 1  # V left the index
    nbr = g.neighbours()[0]
    assert not set(g.vectors.ids.tolist()) & {u, v} and not np.isin(nbr, [u, v]).any()
    known = stages.state_user_ids(s, H1)
    lists = stages.neighbours(s, model, known)
    assert listed_by(lists, u) == 0 and listed_by(lists, v) == 0
    assert not stages.lookup(s, [u])[2][0] and len(read_positives(s.redis, [u], 1e9)[0]) == 0
    # retention ran at the end of the hour: no snapshot on disk holds U or V any more
    assert everywhere_on_disk(s, u) == [] and everywhere_on_disk(s, v) == []
    assert StateSnapshot(layout.state(T0)).num_users == len(StateSnapshot(layout.state(T0)).user_ids())
