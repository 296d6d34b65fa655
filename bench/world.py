"""The world an hourly refresh runs in at production shape, built once and cached on disk.

Production is not "every user active": an hour touches a small share of the *known* users, while the
state, the store and the graph hold all of them. `prepare_world` builds that world for a `WorldShape`:

1. **A trained model** (`trained_model`): the production trainer (`soe.flows.stages.train_model`)
   on the last events of ``TRAIN_USERS`` users of the same synthetic catalogue (their own slice of
   the population). Cached by the catalogue, the training slice and the train settings.
2. **Every known user's history** as the state snapshot at ``T0`` (a layered base layer, exactly
   what the sequence pipeline publishes), generated slice by slice (`SyntheticConfig.user_offset`:
   one catalogue, each slice its own users), so memory follows the slice, not the population.
3. **The measured hour's events** ``[T0, T0 + 1h)``: ``active_users`` of the known users (a fixed
   share of every slice), generated from the same users (same planted interests) and published as
   the hour's event partition (one per active count; the rest of the world is shared).
4. **The previous generation**: the production backfill (`soe.flows.backfill.run_backfill`) encodes
   every known user from the state, validates, builds the full graph, publishes vectors and
   neighbour lists to Redis and makes the model current. Redis is saved (RDB) into the cache.

`World.checkout` gives a run its own copy: the data directory hard-linked (published snapshots are
never modified, only replaced, so links are safe) and a redis-server loaded from the saved RDB, so a
rerun pays only for the hour. The cache lives under ``<data_dir>/world-<key>`` where the key hashes
every parameter of the setup.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import is_complete, publish_dir, read_marker, write_json_atomic
from core.contracts import ATTRIBUTE_COLUMNS, SEQUENCE, TS
from core.layout import HOUR, Layout, utc
from core.sequence_state import BASE, LAYOUT, Layer, layer_name

T0 = utc("2026-03-02T00:00Z")  # the state's as_of; the measured hour is [T0, T0 + 1h)
TRAIN_USERS = 60_000  # users whose histories train the model
TRAIN_OFFSET = 1 << 40  # the training users' slice of the population (ids disjoint from the known users)
LIST_COLUMNS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)


@dataclass(frozen=True)
class WorldShape:
    known_users: int  # users with a history: in the state, the store and the graph
    active_users: int  # of them, active in the measured hour
    history_hours: int = 48  # event time the histories span before T0
    history_events: float = 24.0  # mean base events per known user over the history (heavy-tailed)
    hour_events: float = 8.0  # mean base events per active user in the measured hour
    n_items: int = 200_000  # catalogue size (the model is trained on the same catalogue)
    n_clusters: int = 50  # planted interest clusters
    slice_users: int = 250_000  # users generated at a time (bounds the generator's memory)
    seed: int = 0  # catalogue and users derive from this

    @property
    def label(self) -> str:
        return f"{self.known_users:,} known / {self.active_users:,} active"

    def key(self, *extra: object) -> str:
        text = json.dumps([asdict(self), *extra], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


SIZES: dict[str, WorldShape] = {
    "quick": WorldShape(known_users=100_000, active_users=10_000),
    "default": WorldShape(known_users=10_000_000, active_users=1_000_000),
    "all-active": WorldShape(known_users=1_000_000, active_users=1_000_000),
}


def shape_for(size: str, known: int | None = None, active: int | None = None) -> WorldShape:
    """A named size, optionally with other counts (the scaling table: 1M / 3M / 10M known, 10 % active)."""
    shape = SIZES[size]
    if known is not None:
        shape = replace(shape, known_users=known, active_users=active or max(1, known // 10))
    elif active is not None:
        shape = replace(shape, active_users=active)
    if shape.active_users > shape.known_users:
        raise ValueError(f"active users ({shape.active_users}) exceed known users ({shape.known_users})")
    return shape


# -- events -> sequences ----------------------------------------------------------------------------
def sequences_of(events: pa.Table, as_of: datetime, max_len: int) -> pa.Table:
    """Each user's newest ``max_len`` events as one SEQUENCE-contract row, oldest -> newest."""
    uid = events["user_id"].to_numpy()
    ts = events["ts"].cast(pa.int64()).to_numpy()
    order = np.lexsort((ts, uid))  # (E,) by user, then time
    uid_sorted = uid[order]
    starts = np.flatnonzero(np.r_[True, uid_sorted[1:] != uid_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(uid_sorted)])
    from_newest = np.repeat(starts + counts, counts) - np.arange(len(uid_sorted))  # 1 = newest
    keep = order[from_newest <= max_len]
    kept = np.minimum(counts, max_len)
    offsets = pa.array(np.r_[0, np.cumsum(kept)].astype(np.int32))
    taken = events.select(list(LIST_COLUMNS)).take(pa.array(keep)).combine_chunks()
    columns = {
        "user_id": pa.array(uid_sorted[starts]),
        "as_of": pa.array(np.full(len(starts), int(as_of.timestamp() * 1000), "datetime64[ms]"), TS),
        "n_events": pa.array(kept.astype(np.int32)),
        **{c: pa.ListArray.from_arrays(offsets, taken[c].chunk(0)) for c in LIST_COLUMNS},
    }
    return pa.table(columns).cast(SEQUENCE.schema)


def _slices(shape: WorldShape) -> Iterator[tuple[int, int, int]]:
    """(slice index, first user index, users) covering the known users; the active share per slice."""
    for i, first in enumerate(range(0, shape.known_users, shape.slice_users)):
        yield i, first, min(shape.slice_users, shape.known_users - first)


def _config(shape: WorldShape, offset: int, users: int, **kw):
    from core.datasets.synthetic import SyntheticConfig

    return SyntheticConfig(
        n_users=users,
        n_items=shape.n_items,
        n_clusters=shape.n_clusters,
        seed=shape.seed,
        user_offset=offset,
        **kw,
    )


def history(shape: WorldShape, offset: int, users: int, as_of: datetime, max_len: int):
    """(sequences as of ``as_of``, planted users) of one slice: its events in the history window."""
    from core.datasets.synthetic import generate

    log = generate(
        _config(
            shape,
            offset,
            users,
            hours=shape.history_hours,
            start=str(as_of - timedelta(hours=shape.history_hours)),
            base_events_per_user=shape.history_events,
            late_fraction=0.0,
        )
    )
    return sequences_of(log.events, as_of, max_len), log.users


def hour_events(
    shape: WorldShape, offset: int, users: int, start: datetime, active: int, draw: int = 0
) -> pa.Table:
    """The events of ``active`` of the slice's users in [start, start + 1h) (the same planted users);
    ``draw`` > 0 picks another set of active users (the hours after the first)."""
    from core.datasets.synthetic import generate

    log = generate(
        _config(shape, offset, users, hours=1, start=str(start), base_events_per_user=shape.hour_events)
    )
    rng = np.random.default_rng([shape.seed, offset, 7, *([draw] if draw else [])])
    chosen = log.users["user_id"].to_numpy()[rng.choice(users, size=active, replace=False)]
    return log.events.filter(pc.is_in(log.events["user_id"], pa.array(chosen)))


# -- the cached setup -------------------------------------------------------------------------------
@dataclass
class World:
    shape: WorldShape
    root: Path  # the cache directory: data/, redis/dump.rdb, world.json
    model: str  # the current model version (trained on this catalogue)
    info: dict  # what the setup measured (seconds per step, counts)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def rdb(self) -> Path:
        return self.root / "redis" / "dump.rdb"

    @property
    def hour(self) -> Path:
        """The measured hour's event partition for this shape's active users (one per active count)."""
        return self.root / "hours" / f"active={self.shape.active_users}"

    def hour_at(self, h: int) -> Path:
        """The events of the measured hour ``h`` (0 = the first, `hour`): another draw of active users
        each, the hour's events starting at T0 + h."""
        return self.hour if h == 0 else self.root / "hours" / f"active={self.shape.active_users}-hour={h}"

    @property
    def hour_events(self) -> int:
        return int(read_marker(self.hour)["rows"])

    def ensure_hour(self, say: Callable[[str], None] = print, h: int = 0) -> None:
        """Generate hour ``h``'s events of ``active_users`` of the known users, once per active count."""
        path = self.hour_at(h)
        if is_complete(path):
            return
        shape, share = self.shape, self.shape.active_users / self.shape.known_users
        manifest: dict = {"contract": "event/1"}
        with publish_dir(path, manifest) as tmp:
            rows = 0
            for i, first, users in _slices(shape):
                active = min(users, round(share * (first + users)) - round(share * first))
                part = hour_events(shape, first, users, T0 + h * HOUR, active, draw=h)
                pq.write_table(part, tmp / f"part-{i:05d}.parquet")
                rows += part.num_rows
            manifest["rows"] = rows
        say(f"world {shape.label}: {rows:,} events in measured hour {h}")

    def checkout(self, work: Path, hours: int = 1) -> Path:
        """A run's own copy of the data (hard links), the measured hours' events linked in; Redis:
        `start_redis`."""
        target = work / "data"
        subprocess.run(["cp", "-al", str(self.data), str(target)], check=True)
        for h in range(hours):
            self.ensure_hour(h=h)
            partition = Layout(target).event_partition(T0 + h * HOUR)
            partition.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", str(self.hour_at(h)), str(partition)], check=True)
        return target

    def start_redis(self, work: Path):
        """A redis-server on a free port, loaded from the setup's RDB (not persisting further writes)."""
        from store import local_server

        rdb_dir = work / "redis-data"
        rdb_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.rdb, rdb_dir / "dump.rdb")
        return local_server.start_single(work / "redis", extra_conf={"dir": str(rdb_dir)}, timeout=600)


def settings_for(data: Path, redis=None, known_users: int = 0):
    """The settings every setup step and the measured hour run with: the embedded defaults, this data
    root, and any ``SOE_*`` environment override, e.g. ``SOE_GRAPH__RESEARCH_WITH=local`` (meant for
    the hour: the world's cache key does not include overrides)."""
    from soe.config import load_settings

    s = load_settings(environ={**os.environ, "SOE_DATA__ROOT": str(data)})  # SOE_* overrides apply
    if redis is not None:
        s.redis = redis.redis_settings(buckets=max(64, known_users // 64))
    s.graph.publish_redis = True
    return s


def trained_model(shape: WorldShape, cache: Path, say: Callable[[str], None] = print) -> tuple[Path, str]:
    """A model trained on the world's catalogue (cached): (its models directory, version)."""
    from soe.flows import stages

    base = load_defaults()
    train = base.train.model_copy(update={"epochs": 6, "time_budget_s": 300.0, "eval_users": 1000})
    key = hashlib.sha256(
        json.dumps(
            [
                shape.n_items,
                shape.n_clusters,
                shape.seed,
                shape.history_hours,
                shape.history_events,
                TRAIN_USERS,
                base.sequences.max_len,
                train.model_dump(mode="json"),
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    root = cache / f"model-{key}"
    done = root / "model.json"
    if done.exists():
        return root / "data" / "models", json.loads(done.read_text())["version"]
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    s = settings_for(root / "data")
    s.train = train
    seqs, _ = history(shape, TRAIN_OFFSET, TRAIN_USERS, T0, s.sequences.max_len)
    from encoder.inference.sample import write_state_snapshot

    write_state_snapshot(s.layout(), T0, seqs, num_files=4)
    say(f"training the bench model on {seqs.num_rows:,} users' histories (cached under {root})")
    version = stages.train_model(s, s.layout().state(T0))
    write_json_atomic(done, {"version": version, "train_s": round(time.perf_counter() - t0, 1)})
    return root / "data" / "models", version


def load_defaults():
    from soe.config import load_settings

    return load_settings(environ={})


def write_state(layout, as_of: datetime, parts: Iterator[pa.Table]) -> int:
    """Publish the state snapshot at ``as_of``: one base layer, one part file per slice."""
    manifest: dict = {}
    rows = 0
    with publish_dir(layout.state(as_of), manifest) as tmp:
        (tmp / layer_name(as_of)).mkdir()
        for i, part in enumerate(parts):
            pq.write_table(part, tmp / layer_name(as_of) / f"part-{i:05d}.parquet")
            rows += part.num_rows
        manifest.update(
            as_of=as_of.isoformat(),
            layout=LAYOUT,
            layers=[Layer(layer_name(as_of), BASE, as_of, rows).to_json()],
            state_users=rows,
        )
    return rows


def prepare_world(shape: WorldShape, cache: Path, say: Callable[[str], None] = print) -> World:
    """The cached world of ``shape``, built on the first call. Each step is kept once done (the state,
    the backfill's manifest, the saved store), so an interrupted setup resumes where it stopped."""
    cache = Path(cache).resolve()  # redis-server resolves its paths after changing into its dir
    cache.mkdir(parents=True, exist_ok=True)
    models_dir, model = trained_model(shape, cache, say)
    root = cache / f"world-{replace(shape, active_users=0).key(model)}"  # one base for every active share
    done = root / "world.json"
    if not done.exists():
        info: dict = {"shape": asdict(shape), "model": model}
        s = settings_for(root / "data")
        if not (is_complete(s.layout().state(T0)) and (s.layout().ground_truth / "users.parquet").exists()):
            if root.exists():
                shutil.rmtree(root)
            t0 = time.perf_counter()
            shutil.copytree(models_dir, s.layout().models)
            write_histories(shape, s.layout(), s.sequences.max_len, root / "staging-active", say)
            info["generate_s"] = round(time.perf_counter() - t0, 1)
            say(f"world of {shape.known_users:,} known users: state written in {info['generate_s']} s")
        info["state_users"] = int(read_marker(s.layout().state(T0))["state_users"])
        info.update(previous_generation(root, model, shape.known_users, say))
        write_json_atomic(done, info)
    world = World(shape, root, model, json.loads(done.read_text()))
    world.ensure_hour(say)
    return world


def write_histories(
    shape: WorldShape, layout, max_len: int, staged: Path, say: Callable[[str], None]
) -> None:
    """Every known user's history as the state at T0, the users active in the hour before T0 as the
    active snapshot at T0 (what the hourly run at T0 left), and the planted truth."""
    planted: list[pa.Table] = []
    staged.mkdir(parents=True)

    def state_parts() -> Iterator[pa.Table]:
        for i, first, users in _slices(shape):
            seqs, users_table = history(shape, first, users, T0, max_len)
            planted.append(users_table.select(["user_id", "primary_cluster"]))
            ts = seqs["ts"].combine_chunks()
            newest = ts.values.cast(pa.int64()).to_numpy()[ts.offsets.to_numpy()[1:] - 1]  # (U,)
            recent = pa.array(newest >= int((T0 - HOUR).timestamp() * 1000))
            pq.write_table(seqs.filter(recent), staged / layout.active_shard(T0, i).name)
            say(f"  slice {i}: {seqs.num_rows:,} histories")
            yield seqs

    write_state(layout, T0, state_parts())
    shards = sorted(staged.glob("shard=*.parquet"))
    recent_users = sum(pq.ParquetFile(f).metadata.num_rows for f in shards)
    with publish_dir(layout.active(T0), {"num_shards": len(shards), "active_users": recent_users}) as tmp:
        for f in shards:
            os.replace(f, tmp / f.name)
    staged.rmdir()
    layout.ground_truth.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(planted), layout.ground_truth / "users.parquet")


def previous_generation(root: Path, model: str, known_users: int, say: Callable[[str], None]) -> dict:
    """The production backfill of every known user (vectors, validation, full graph, store, current
    pointer), and the store saved as an RDB under ``root/redis``. When the backfill's manifest exists
    already (a setup interrupted after it), only the store is published again from its outputs."""
    from soe.flows import backfill, hourly, stages
    from store import local_server

    info: dict = {}
    server = local_server.start_single(root / "redis-run", timeout=600)
    try:
        s = settings_for(root / "data", server, known_users)
        manifest = s.layout().manifest(backfill.DAG_ID, T0)
        if manifest.exists():
            say("backfill done before: publishing its vectors and graph to a fresh store")
            n = json.loads(manifest.read_text())["stages"]["encode"]["shards"]
            for shard in range(n):
                hourly.publish(s, model, T0, shard)
            backfill.publish_graph(s, model, T0)
            stages.switch_current(s, model)
        else:
            say("backfill: every known user encoded, validated, graph built, published")
            backfill.run_backfill(s, model)
        stages_run = json.loads(manifest.read_text())["stages"]
        info["backfill_s"] = round(sum(v.get("seconds") or 0.0 for v in stages_run.values()), 1)
        info["backfill_stages_s"] = {k: v.get("seconds") for k, v in stages_run.items()}
        client = server.client(socket_timeout=None)  # SAVE of millions of keys takes minutes
        client.save()
        info["redis_used_mb"] = round(client.info("memory")["used_memory"] / 2**20, 1)
        node = next((root / "redis-run").glob("node-*"))
        (root / "redis").mkdir(exist_ok=True)
        os.replace(node / "dump.rdb", root / "redis" / "dump.rdb")
    finally:
        local_server.stop(root / "redis-run")
        shutil.rmtree(root / "redis-run", ignore_errors=True)
    say(f"previous generation of {known_users:,} users ready (backfill stages {info['backfill_s']} s)")
    return info


def planted_clusters(world_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, primary planted cluster) of the world's known users."""
    t = pq.read_table(Path(world_data) / "ground_truth" / "users.parquet")
    return t["user_id"].to_numpy(), t["primary_cluster"].to_numpy()
