"""Forget users: gone from the store at once, from the served graph at once, and never re-created.

`forget_everywhere` (``soe forget``) does, in this order:

1. records the tombstones (`core.forget.record_tombstones`, under the data root) **first**: from then
   on every stage honours them (the validator quarantines their events as ``forgotten``, the hourly
   state drops them, the encoder, publish, the graph and positives skip them, the service never uses
   them), so a crash half-way still ends in a complete forget (rerun the command to finish the store);
2. deletes the users' records of every kind through `VectorStore.delete_users` (`forget_users`):
   vectors and neighbour lists of every model namespace, and the recent positives;
3. for every model, rewrites the newest accepted graph snapshot without them
   (`store.graph.snapshot.scrub_snapshot`): every other user whose list named one is searched again
   on the scrubbed index, and that new list is written to the store before the snapshot is replaced.

Older snapshots on disk are rewritten by the next retention (`soe.flows.retention`). Each removal is
logged with a count per namespace; ids are not logged. Forgetting is idempotent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.forget import ForgetList, record_tombstones
from core.layout import Layout
from store.backends import open_store
from store.base import VectorStore
from store.settings import RedisSettings

log = logging.getLogger("soe.store.forget")


def read_user_ids(path: str | Path) -> np.ndarray:
    """User ids from a file: Parquet with a user_id column, or text with one id per line (# comments)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"users file {p} does not exist")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p, columns=["user_id"])
        return table.column("user_id").to_numpy().astype(np.int64)
    ids = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise ValueError(f"{p}:{n}: {text!r} is not an integer user id (one id per line)") from None
    return np.asarray(ids, dtype=np.int64)


def forget_users(redis: RedisSettings, user_ids, *, store: VectorStore | None = None) -> dict:
    """Remove the users' vectors and neighbour lists from every namespace, and their positives; counts."""
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    store = store if store is not None else open_store(redis)
    removed = store.delete_users(ids)
    for name, count in sorted(removed.items()):
        kind, model = name.split(":", 1)
        what = {"v": "vectors", "n": "neighbour lists", "p": "recent-positive lists"}[kind]
        log.info("forget: removed %d %s of %s", count, what, "the graph" if kind == "p" else f"model {model}")
    return {"users": len(ids), "removed": removed, "total": int(sum(removed.values()))}


def forget_in_graphs(redis: RedisSettings, layout: Layout, store: VectorStore, forget: ForgetList) -> dict:
    """Scrub each model's newest accepted graph snapshot; the re-searched lists go to the store first."""
    from store.graph.redis_io import write_neighbour_lists
    from store.graph.snapshot import latest_snapshot, scrub_snapshot

    root = Path(layout.root) / "graph"
    on_disk = (
        {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if root.is_dir()
        else set()
    )
    in_store = set(store.models())
    out: dict[str, dict] = {}
    for model in sorted(on_disk):
        snap = latest_snapshot(layout, model)
        if snap is None:
            continue

        def to_store(ids, nbr, scores, s, model=model) -> None:
            if model in in_store:
                write_neighbour_lists(redis, model, s.vectors.dim, ids, nbr, scores, s.as_of, store=store)

        r = scrub_snapshot(snap.path, forget, on_relisted=to_store)
        out[model] = {
            "as_of": snap.manifest["as_of"],
            "users": r["users"],
            "relisted": int(len(r["relisted"])),
        }
        log.info(
            "forget: graph %s as_of=%s: %d users removed, %d lists searched again",
            model,
            snap.manifest["as_of"],
            r["users"],
            len(r["relisted"]),
        )
    return out


def forget_everywhere(
    redis: RedisSettings, layout: Layout, user_ids, *, store: VectorStore | None = None
) -> dict:
    """``soe forget``: tombstones first, then the store, then the served graph (see the module docstring)."""
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    tombstones = record_tombstones(layout.root, ids)
    store = store if store is not None else open_store(redis)
    out = forget_users(redis, ids, store=store)
    out["tombstones"] = str(tombstones) if tombstones is not None else None
    out["graphs"] = forget_in_graphs(redis, layout, store, ForgetList.load(layout.root))
    return out
