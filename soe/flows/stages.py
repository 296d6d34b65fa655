"""The one adapter between the flows and the stage functions of pipelines/, encoder/ and store/.

Every call a flow makes into another component goes through this module, with the heavy import
(pyspark, torch, faiss, redis) done inside the function. So a DAG file that imports the flows
parses in milliseconds, and a renamed stage function is fixed in one place.

The functions here add no logic of their own beyond small reads of published manifests (which
model, how many shards, which users were expected).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.atomic import is_complete, read_marker
from core.layout import snapshot_times, utc

log = logging.getLogger("soe.flows")


# -- sequences (Spark) ----------------------------------------------------------------------------
def update_sequences(settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Merge the interval's events into the state; publish state(as_of) and the K active shards."""
    from pipelines.hourly import update_sequences as run

    return dict(run(settings.pipeline(), utc(start), utc(end)))


def active_manifest(settings, as_of: datetime) -> dict[str, Any]:
    """The published ``active/as_of=T`` manifest (active_users, num_shards, ...)."""
    return read_marker(settings.layout().active(as_of))


def active_user_ids(settings, as_of: datetime) -> np.ndarray:
    """Every user id in the published active shards of ``as_of``, but the forgotten ones (never encoded)."""
    files = sorted(settings.layout().active(as_of).glob("shard=*.parquet"))
    ids = [pq.read_table(f, columns=["user_id"]).column("user_id").to_numpy() for f in files]
    out = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return out[~forget_list(settings).mask(out)]


def forget_list(settings):
    """The forget list under the data root (`core.forget`)."""
    from core.forget import ForgetList

    return ForgetList.load(settings.layout().root)


def newest_state(settings, at_or_before: datetime | None = None) -> datetime:
    """The as_of of the newest published state snapshot (at or before the given time)."""
    times = [
        t
        for t in snapshot_times(settings.layout().state_root)
        if at_or_before is None or t <= utc(at_or_before)
    ]
    if not times:
        raise FileNotFoundError(
            f"no published state snapshot under {settings.layout().state_root}: run `soe refresh` first"
        )
    return times[-1]


def state_user_ids(settings, as_of: datetime) -> np.ndarray:
    """Every user id in the published state snapshot ``as_of`` (every known user), but the forgotten ones."""
    from core.sequence_state import StateSnapshot

    ids = StateSnapshot(settings.layout().state(as_of)).user_ids()
    return ids[~forget_list(settings).mask(ids)]


# -- encoder --------------------------------------------------------------------------------------
def encode_shard(
    settings, model: str, as_of: datetime, shard: int, num_shards: int | None = None, source: str = "active"
) -> dict[str, Any]:
    from encoder.inference.engine import encode_shard as run

    return dict(
        run(
            settings.layout(),
            settings.inference,
            model,
            utc(as_of),
            int(shard),
            num_shards=num_shards,
            source=source,
        )
    )


def mark_embeddings(settings, model: str, as_of: datetime, num_shards: int) -> dict[str, Any]:
    """Mark the (model, as_of) embedding snapshot complete once all its shards are published."""
    from core.embeddings import mark_snapshot

    return dict(mark_snapshot(settings.layout(), model, utc(as_of), int(num_shards)))


def read_vectors(settings, model: str, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
    """(user ids (N,), float32 vectors (N, D)) of one published embedding snapshot."""
    from core.embeddings import read_embeddings, vector_array

    table = read_embeddings(settings.layout(), model, utc(as_of))
    return table.column("user_id").to_numpy(), vector_array(table.column("vector"))  # (N,), (N, D)


def list_models(settings) -> list[dict[str, Any]]:
    from encoder.artifact import list_models as run

    return list(run(settings.layout()))


def model_info(settings, model: str) -> dict[str, Any]:
    for m in list_models(settings):
        if m.get("version") == model:
            return m
    raise LookupError(
        f"model {model!r} is not under {settings.layout().models}: train it first (`soe train`)"
    )


# -- store ----------------------------------------------------------------------------------------
def current_model(settings) -> str | None:
    """The model the rankers read now (the store's current-model pointer), or None."""
    from store.models import current_model as run

    return run(settings.redis)


def switch_current(settings, model: str) -> Any:
    """Atomically point readers at ``model`` (the previous one stays readable for rollback)."""
    from store.models import switch_current as run

    return run(settings.redis, model)


def publish_shard(settings, model: str, as_of: datetime, shard: int | None) -> dict[str, Any]:
    from store.publish import publish_embeddings

    return dict(publish_embeddings(settings.redis, settings.layout(), model, utc(as_of), shard=shard))


def lookup_found(settings, model: str, user_ids: np.ndarray) -> tuple[int, int]:
    """(found, asked): how many of ``user_ids`` have a vector of ``model`` readable from Redis."""
    from store.client import LookupClient

    client = LookupClient(settings.redis, model=model)
    _, found = client.get(np.asarray(user_ids, dtype=np.int64))
    return int(np.asarray(found).sum()), int(len(user_ids))


def vectors_found(settings, model: str, user_ids: np.ndarray, batch: int = 10_000) -> int:
    """How many of ``user_ids`` have a vector of ``model`` in Redis (batched lookups)."""
    from store.client import LookupClient

    client = LookupClient(settings.redis, model=model)
    ids = np.asarray(user_ids, dtype=np.int64)
    return int(
        sum(int(np.asarray(client.get(ids[i : i + batch])[1]).sum()) for i in range(0, len(ids), batch))
    )


def lookup(settings, user_ids) -> tuple[str | None, np.ndarray, np.ndarray]:
    """(current model, vectors (n, D), found (n,)) as a ranker reads them: through the pointer."""
    from store.client import LookupClient

    client = LookupClient(settings.redis)
    vectors, found = client.get(np.asarray(user_ids, dtype=np.int64))
    return client.current_model(), vectors, found


def neighbours(settings, model: str, user_ids) -> list:
    from store.client import LookupClient

    return LookupClient(settings.redis, model=model).neighbours(np.asarray(user_ids, dtype=np.int64))


def lookalike(settings, model: str, seed_ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(audience user ids, scores) of the newest graph of ``model``, with the configured method."""
    from store.graph.lookalike import lookalike as run
    from store.graph.snapshot import latest_snapshot

    g = settings.graph
    snap = latest_snapshot(settings.layout(), model)
    if snap is None:
        raise FileNotFoundError(f"no published graph of model {model!r}")
    index = snap.searcher() if g.lookalike_method == "max_seed" else None  # exact re-ranked scores
    users = snap.vectors.without(forget_list(settings).ids)  # a forgotten user is no seed and in no audience
    aud = run(
        users,
        seed_ids,
        size,
        method=g.lookalike_method,
        n_centroids=g.lookalike_centroids,
        index=index,
        seed_k=g.lookalike_seed_k,
    )
    return aud.user_ids, aud.scores


def build_graph(settings, model: str, as_of: datetime, *, accept: bool = True) -> dict[str, Any]:
    """Build the graph on disk; ``accept=False`` (the flows): unaccepted and no lists in the store yet."""
    from store.graph.build import build_graph as run

    return dict(
        run(
            settings.graph,
            settings.redis,
            settings.layout(),
            model,
            utc(as_of),
            publish_redis=None if accept else False,
            accept=accept,
        )
    )


def publish_lists(settings, model: str, as_of: datetime, *, every_list: bool = False) -> dict[str, Any]:
    """The graph snapshot's changed (or every) neighbour lists into the store."""
    from store.graph.build import publish_lists as run

    return dict(run(settings.redis, settings.layout(), model, utc(as_of), every_list=every_list))


def accept_graph(settings, model: str, as_of: datetime) -> dict[str, Any]:
    """Mark the judged graph snapshot accepted: from now on readers and later builds use it."""
    from store.graph.snapshot import accept_snapshot

    return accept_snapshot(settings.layout(), model, utc(as_of))


def newest_graph_time(settings, model: str) -> datetime | None:
    from store.graph.snapshot import graph_times

    times = graph_times(settings.layout(), model)
    return times[-1] if times else None


def has_embeddings(settings, model: str, as_of: datetime) -> bool:
    from core.embeddings import shard_dirs

    return bool(shard_dirs(settings.layout(), model, utc(as_of)))


def published_hours(settings, model: str) -> set[str]:
    """The as_of stamps of ``model`` with a publish manifest in the store (``<as_of>/<shard>`` fields)."""
    from store.backends import open_store

    return {name.split("/", 1)[0] for name in open_store(settings.redis).manifests(model)}


def publish_recent_positives(settings, as_of: datetime) -> dict[str, Any]:
    """The active users' recent positives to Redis, where `candidates` reads its neighbours' ones."""
    from store.graph.positives import publish_recent_positives as run

    return dict(run(settings.graph, settings.events, settings.redis, settings.layout(), utc(as_of)))


def graph_manifest(settings, model: str, as_of: datetime) -> dict[str, Any] | None:
    path: Path = settings.layout().graph(model, as_of)
    return read_marker(path) if is_complete(path) else None


# -- training -------------------------------------------------------------------------------------
def build_trainset(settings, kind: str, split_time: datetime, window_hours: int, name: str) -> Path:
    """The training input at ``split_time``. Kind "state": the newest state snapshot at or before it
    (every known user's last N events, the sequence contract the encoder trains on); any other kind
    is built by pipelines.trainset."""
    if kind == "state":
        return settings.layout().state(newest_state(settings, split_time))
    from pipelines.trainset import build_trainset as run

    return Path(
        run(settings.pipeline(), kind, split_time=utc(split_time), window_hours=window_hours, name=name)
    )


def train_model(settings, trainset: Path) -> str:
    from encoder.train import train_model as run

    return str(
        run(
            settings.layout(),
            settings.train,
            settings.events,
            str(trainset),
            max_len=settings.sequences.max_len,
            show_progress=False,
        )
    )


def evaluate_model(settings, model: str, trainset: Path) -> dict[str, Any]:
    """Leave-last-out metrics (``ndcg@10``, ...) of a published model on a trainset's split."""
    from encoder.data import as_sequences
    from encoder.evaluate import evaluate_model as run

    return dict(
        run(
            settings.layout(),
            settings.train,
            settings.events,
            model,
            as_sequences(str(trainset)),
            staleness=False,
        )
    )
