"""The current-model pointer: which model namespace readers use, switched atomically.

A new model version is backfilled into its own namespace (``soe publish --model NEW``) while
readers keep using the current one. `switch_current` then moves every reader at once: the pointer
is one Redis hash (current, previous, switched_at) updated by one script. `rollback` swaps current
and previous. `cleanup` drops other namespaces, never the current or the previous one, and by
default not one created after the last switch either (that is likely a backfill in progress).

Every function takes a `RedisSettings` section (the store is `store.backends.open_store` of it) or
an open `VectorStore`.
"""

from __future__ import annotations

import logging
from datetime import datetime

from store.backends import open_store
from store.base import VectorStore
from store.keys import check_name
from store.settings import RedisSettings

Target = RedisSettings | VectorStore

log = logging.getLogger("soe.store.models")


def _store(target: Target) -> VectorStore:
    return target if isinstance(target, VectorStore) else open_store(target)


def current_model(target: Target) -> str | None:
    return _store(target).pointer().get("current")


def switch_current(target: Target, version: str) -> dict:
    """Point every reader at ``version`` (which must have been published); the old one becomes previous."""
    store = _store(target)
    check_name("model version", version)
    meta = store.model_meta(version)
    if meta is None:
        raise LookupError(
            f"model {version!r} has no namespace in the store: publish it first "
            f"(published models: {store.models()})"
        )
    if not store.manifests(version):
        raise LookupError(
            f"model {version!r} has no completed publish (no manifest): refusing to switch to it"
        )
    pointer = store.switch_pointer(version)
    log.info("current model -> %s (previous %s)", pointer.get("current"), pointer.get("previous"))
    return pointer


def rollback(target: Target) -> dict:
    """Swap current and previous; raises LookupError when there is no previous model."""
    store = _store(target)
    previous = store.pointer().get("previous")
    if previous and store.model_meta(previous) is None:
        raise LookupError(f"previous model {previous!r} was removed from the store: cannot roll back to it")
    pointer = store.swap_pointer()
    log.info(
        "rolled back: current model -> %s (previous %s)", pointer.get("current"), pointer.get("previous")
    )
    return pointer


def cleanup(target: Target, *, dry_run: bool = False, include_pending: bool = False) -> dict:
    """Drop every namespace except current and previous (and, unless ``include_pending``, those
    created after the last switch). Returns what was (or would be) removed."""
    store = _store(target)
    pointer = store.pointer()
    protected = {m for m in (pointer.get("current"), pointer.get("previous")) if m is not None}
    switched = pointer.get("switched_at")
    removed: dict[str, int] = {}
    kept = sorted(protected)
    for model in store.models():
        if model in protected:
            continue
        meta = store.model_meta(model)
        created = meta.extra.get("created_at") if meta else None
        pending = bool(
            switched and created and datetime.fromisoformat(created) > datetime.fromisoformat(switched)
        )
        if pending and not include_pending:
            kept.append(model)
            continue
        removed[model] = 0 if dry_run else store.drop_model(model)
        log.info(
            "cleanup: %s namespace %s (%d removed)",
            "would drop" if dry_run else "dropped",
            model,
            removed[model],
        )
    return {"removed": removed, "kept": sorted(kept), "dry_run": dry_run}


def list_models(target: Target) -> list[dict]:
    """Every namespace with its shape, last as_of and role (current / previous / other)."""
    store = _store(target)
    pointer = store.pointer()
    out = []
    for model in store.models():
        meta = store.model_meta(model)
        role = (
            "current"
            if model == pointer.get("current")
            else "previous"
            if model == pointer.get("previous")
            else ""
        )
        shape = {"dim": meta.dim, "dtype": meta.dtype, "buckets": meta.buckets, **meta.extra} if meta else {}
        out.append({"model": model, "role": role, **shape})
    return out
