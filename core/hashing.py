"""The one 64-bit integer mix every stage uses: splitmix64 (Steele, Lea & Flood, 2014).

``splitmix64(x) = mix(x + GOLDEN)`` where ``mix`` is splitmix64's finaliser. Three users:

* the Redis bucket of a user (`store.keys.bucket_of`): ``splitmix64(user_id) mod buckets`` — part of
  the documented wire format (docs/format.md), so it must never change;
* the encoder's hashed embedding tables (`encoder.features.hash_ids`): ``splitmix64(id + salt + GOLDEN*h)``;
* the backfill's hash split of users over shards (`encoder.inference.reader`): ``splitmix64(user_id) mod n``.

Ids are int64 and are mixed as their two's-complement uint64, so negative ids are fine.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 values (wrapping arithmetic), elementwise."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def as_uint64(ids) -> np.ndarray:
    """int64 ids as their two's-complement uint64 (a copy, safe to add to in place)."""
    return np.asarray(ids, dtype=np.int64).astype(np.uint64, copy=True)


def splitmix64(ids) -> np.ndarray:
    """splitmix64 of int64 ids: ``mix64(uint64(id) + GOLDEN)``, uint64 (n,)."""
    z = as_uint64(ids)
    with np.errstate(over="ignore"):
        z += np.uint64(GOLDEN)
    return mix64(z)


def splitmix64_one(value: int) -> int:
    """`splitmix64` of one id in plain Python integers (faster than numpy for a single lookup)."""
    z = (int(value) + GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)
