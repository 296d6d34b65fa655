"""The one key builder of the Redis vector store (the layout is specified in docs/format.md).

Vectors are not stored one key per user: users are spread over ``buckets`` small hashes per model
namespace, field = the decimal user id, value = the encoded vector (store.format). Small hashes stay
listpack-encoded in Redis: a d=64 float16 user costs ~171 bytes (~27 over its 144-byte value, 1.335x
the payload) instead of ~248 for a key of its own (1.94x; docs/format.md, BENCHMARKS.md).

::

    <ns>:v:<model>:{<tag>}<bucket>   hash  user_id -> vector value   (tag = bucket mod 1024)
    <ns>:n:<model>:{<tag>}<bucket>   hash  user_id -> neighbour list value
    <ns>:p:{<tag>}<bucket>           hash  user_id -> recent positive items (model independent)
    <ns>:meta:<model>             hash  dim, dtype, buckets, format, created_at, last_as_of, ...
    <ns>:models                   set   every model namespace ever published (for forget/cleanup)
    <ns>:manifests:<model>        hash  "<as_of>/<shard>" -> JSON counts of one publish
    <ns>:pointer                  hash  current, previous, switched_at (the current-model pointer)

The ``{<tag>}`` part is a Redis Cluster hash tag, ``tag = bucket mod SLOT_TAGS`` (1024): the
buckets of one tag live in one slot, so one server-side upsert call can write many buckets (a few
hundred users) and still touch a single slot. 1024 tags spread evenly over clusters of up to ~100
masters; on a single node the tags do not matter and a call may span any buckets.

The namespace and every model version go through `core.names.check_name` (the one rule for names
that become paths or keys) before they become part of a key, wherever the name came from: an
argument, the config, or a value read back from the store (the pointer, the set of models).

``bucket = splitmix64(uint64(user_id)) mod buckets`` (splitmix64's finaliser, documented in
docs/format.md so any language can compute it): ids that share low bits or arrive in runs still
spread evenly.
"""

from __future__ import annotations

import functools

import numpy as np

from core.hashing import splitmix64, splitmix64_one
from core.names import check_name

SLOT_TAGS = 1024  # cluster hash tags per namespace (part of format version 1)


@functools.lru_cache(maxsize=4096)
def model_name(model: str) -> str:
    """``model`` when it is a valid model version (core.names.check_name), else ValueError; cached, as
    every key builder calls it (a bad name is never cached: the error is raised again each time)."""
    return check_name("model version", model)


def bucket_of_one(user_id: int, buckets: int) -> int:
    """`bucket_of` for one id in plain Python integers (faster than numpy for a single lookup)."""
    return splitmix64_one(user_id) % buckets


def bucket_of(user_ids, buckets: int) -> np.ndarray:
    """The bucket of each user id, int64 (n,)."""
    ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
    return (splitmix64(ids) % np.uint64(buckets)).astype(np.int64)


class Keys:
    """Every Redis key SoE uses, built in one place; every model version is checked
    (`core.names.check_name`) before it becomes part of a key."""

    def __init__(self, namespace: str = "soe"):
        self.ns = check_name("redis namespace", namespace)

    def vectors(self, model: str, bucket: int) -> str:
        b = int(bucket)
        return f"{self.ns}:v:{model_name(model)}:{{{b % SLOT_TAGS}}}{b}"

    def neighbours(self, model: str, bucket: int) -> str:
        b = int(bucket)
        return f"{self.ns}:n:{model_name(model)}:{{{b % SLOT_TAGS}}}{b}"

    def positives(self, bucket: int) -> str:
        """Recent positive items (model independent, `redis.buckets` buckets; written by the graph)."""
        b = int(bucket)
        return f"{self.ns}:p:{{{b % SLOT_TAGS}}}{b}"

    def meta(self, model: str) -> str:
        return f"{self.ns}:meta:{model_name(model)}"

    def models(self) -> str:
        return f"{self.ns}:models"

    def manifests(self, model: str) -> str:
        return f"{self.ns}:manifests:{model_name(model)}"

    def pointer(self) -> str:
        return f"{self.ns}:pointer"

    def plain(self, model: str, user_id: int) -> str:
        """One key per user: not used by the store, only by the benchmark's memory baseline."""
        return f"{self.ns}:plain:{model_name(model)}:{int(user_id)}"
