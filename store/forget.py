"""Forget users: remove their vectors from every model namespace, their neighbour lists and their
recent positives.

`forget_users` deletes the users' records of every kind through `VectorStore.delete_users`: vectors
and neighbour lists of every model namespace, and the model-independent recent positives (in Redis:
one HDEL per bucket hash, pipelined). Each removal is
logged with a count per namespace; ids are not logged. Forgetting is idempotent.

Out of scope here: the Parquet sources (events, sequences, embeddings) are the pipelines' to purge,
and other users' neighbour lists that mention a forgotten user are rebuilt by the next graph run
(their vectors are gone, so the graph no longer finds them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

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
