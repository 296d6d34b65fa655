"""The one value encoder/decoder pair of the Redis store: vectors and neighbour lists (docs/format.md).

Every value starts with the same 16-byte little-endian header::

    offset size  field
    0      1     format version            (1)
    1      1     kind                      1 float16 | 2 float32 | 3 int8 (+ per-vector scale) | 16 neighbours
    2      2     n  (uint16)               vector dim, or number of neighbours k
    4      8     as_of (int64)             ms since the Unix epoch, UTC: the data time of the value
    12     4     model id (uint32)         first 4 bytes of sha256(model_version), little-endian

then the payload: ``n`` float16 / float32 values; or a float32 scale and ``n`` int8 values
(x ≈ q * scale, scale = max|x| / 127); or ``k`` int64 neighbour ids followed by ``k`` float32 scores.

Two paths encode vectors: `encode_vector` (plain, one value with `struct`, the reference) and
`encode_vectors` (a numpy record array for a whole batch, the fast path used by publish); tests
check they produce identical bytes. Neighbour lists likewise: `encode_neighbours` (one list, the
reference) and `encode_neighbour_table` (a whole (n, k) table, grouped by list length). The
conditional upsert of every backend (in Redis the Lua script of store.scripts) reads only bytes 5-12
(1-based) of a value: the as_of.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.layout import epoch_ms

FORMAT_VERSION = 1
HEADER = struct.Struct("<BBHqI")  # version, kind, n, as_of_ms, model_id
HEADER_SIZE = HEADER.size  # 16
AS_OF_OFFSET = 4  # byte offset of as_of (the Lua upsert reads it)

KINDS = {"float16": 1, "float32": 2, "int8": 3}  # vector payload dtypes
NEIGHBOURS = 16
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("i1")}


class FormatError(ValueError):
    """A value that is not a valid SoE value (wrong version, kind, or length)."""


@functools.lru_cache(maxsize=256)
def model_id(model_version: str) -> int:
    """The 4-byte id of a model version stored in every value header."""
    return int.from_bytes(hashlib.sha256(model_version.encode()).digest()[:4], "little")


def value_size(dtype: str, dim: int) -> int:
    """Bytes of one encoded vector."""
    kind = KINDS[dtype]
    return HEADER_SIZE + (4 if kind == 3 else 0) + dim * _DTYPES[kind].itemsize


@dataclass(frozen=True)
class Header:
    version: int
    kind: int
    n: int
    as_of: int  # ms UTC
    model_id: int


def read_header(value: bytes) -> Header:
    if len(value) < HEADER_SIZE:
        raise FormatError(f"value of {len(value)} bytes is shorter than the {HEADER_SIZE}-byte header")
    h = Header(*HEADER.unpack_from(value))
    if h.version != FORMAT_VERSION:
        raise FormatError(f"value has format version {h.version}, this code reads version {FORMAT_VERSION}")
    return h


# -- vectors: the plain reference path --------------------------------------------------------------
def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q int8 (n, d), scale float32 (n,))."""
    x = np.asarray(x, dtype=np.float32)
    scale = (np.abs(x).max(axis=-1) / 127.0).astype(np.float32)  # (n,)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale


def encode_vector(vector, as_of, model_version: str, dtype: str = "float16") -> bytes:
    """One vector -> value bytes (reference implementation)."""
    if dtype not in KINDS:
        raise ValueError(f"dtype must be one of {sorted(KINDS)}, got {dtype!r}")
    v = np.asarray(vector, dtype=np.float32).reshape(-1)  # (d,)
    kind = KINDS[dtype]
    out = HEADER.pack(FORMAT_VERSION, kind, v.size, epoch_ms(as_of), model_id(model_version))
    if kind == 3:
        q, scale = _quantize(v[None])
        return out + struct.pack("<f", float(scale[0])) + q.tobytes()
    return out + v.astype(_DTYPES[kind]).tobytes()


def decode_vector(value: bytes) -> tuple[np.ndarray, Header]:
    """Value bytes -> (float32 (d,), header) (reference implementation)."""
    h = read_header(value)
    if h.kind not in _DTYPES:
        raise FormatError(f"value kind {h.kind} is not a vector")
    body = memoryview(value)[HEADER_SIZE:]
    if h.kind == 3:
        (scale,) = struct.unpack_from("<f", body)
        q = np.frombuffer(body, dtype=np.int8, offset=4)
        _check_len(value, h, q.size)
        return q.astype(np.float32) * np.float32(scale), h
    v = np.frombuffer(body, dtype=_DTYPES[h.kind])
    _check_len(value, h, v.size)
    return v.astype(np.float32), h


def _check_len(value: bytes, h: Header, got: int) -> None:
    if got != h.n:
        raise FormatError(f"value of {len(value)} bytes holds {got} elements, its header says {h.n}")


# -- vectors: the batch fast path -------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def record_dtype(dtype: str, dim: int) -> np.dtype:
    """The numpy record layout of one encoded vector (header fields + payload), packed."""
    kind = KINDS[dtype]
    fields: list[tuple[Any, ...]] = [
        ("version", "u1"),
        ("kind", "u1"),
        ("n", "<u2"),
        ("as_of", "<i8"),
        ("model_id", "<u4"),
    ]
    if kind == 3:
        fields.append(("scale", "<f4"))
    fields.append(("payload", _DTYPES[kind], (dim,)))
    return np.dtype(fields)


def encode_vectors(vectors, as_of, model_version: str, dtype: str = "float16") -> np.ndarray:
    """A batch of vectors (n, d) -> uint8 (n, value_size): row i is the value bytes of vector i.

    ``as_of`` is one time for all rows or int64 ms (n,). ``rows[a:b].tobytes()`` is the values of
    rows a..b-1 concatenated, which is what the server-side upsert takes.
    """
    if dtype not in KINDS:
        raise ValueError(f"dtype must be one of {sorted(KINDS)}, got {dtype!r}")
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] == 0 or x.shape[1] > 65535:
        raise ValueError(f"vectors must be (n, d) with 1 <= d <= 65535, got shape {x.shape}")
    n, d = x.shape
    rec = np.zeros(n, dtype=record_dtype(dtype, d))
    rec["version"], rec["kind"], rec["n"] = FORMAT_VERSION, KINDS[dtype], d
    rec["as_of"] = as_of if isinstance(as_of, np.ndarray) else epoch_ms(as_of)
    rec["model_id"] = model_id(model_version)
    if dtype == "int8":
        rec["payload"], rec["scale"] = _quantize(x)
    else:
        rec["payload"] = x  # numpy casts to the little-endian payload dtype
    return rec.view(np.uint8).reshape(n, rec.dtype.itemsize)


def decode_vectors(values: Sequence[bytes | None], dim: int | None = None):
    """Values (None = missing) -> (vectors float32 (n, d), found bool (n,), as_of int64 (n,),
    model_id uint32 (n,)).

    Missing rows are zeros with found False. All present values must share one kind and dim.
    """
    n = len(values)
    if n == 1 and values[0] is not None:  # a ranker's single lookup: the plain path is faster
        vec, h = decode_vector(values[0])
        if dim is not None and h.n != dim:
            raise FormatError(f"stored vectors have dim {h.n}, expected {dim}")
        return vec[None], np.ones(1, bool), np.array([h.as_of], np.int64), np.array([h.model_id], np.uint32)
    found = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    present = [v for v in values if v is not None]
    if not present:
        d = dim or 0
        return np.zeros((n, d), np.float32), found, np.zeros(n, np.int64), np.zeros(n, np.uint32)
    h = read_header(present[0])
    if h.kind not in _DTYPES:
        raise FormatError(f"value kind {h.kind} is not a vector")
    if dim is not None and h.n != dim:
        raise FormatError(f"stored vectors have dim {h.n}, expected {dim}")
    name = next(k for k, v in KINDS.items() if v == h.kind)
    rdt = record_dtype(name, h.n)
    blob = b"".join(present)
    if len(blob) != rdt.itemsize * len(present):
        raise FormatError(
            f"{len(present)} values of mixed sizes: expected {rdt.itemsize} bytes each ({name}, d={h.n})"
        )
    rec = np.frombuffer(blob, dtype=rdt)
    # the first 4 header bytes of every record (version, kind, n) in one strided view and one comparison
    head = np.ndarray((len(present),), dtype="<u4", buffer=blob, strides=(rdt.itemsize,))
    if (head != (FORMAT_VERSION | h.kind << 8 | h.n << 16)).any():
        raise FormatError("values of mixed format versions, kinds or dims in one batch")
    payload = rec["payload"].astype(np.float32)  # (m, d)
    if h.kind == 3:
        payload *= rec["scale"][:, None]
    if len(present) == n:  # all found: no scatter
        return payload, found, rec["as_of"].astype(np.int64), rec["model_id"].astype(np.uint32)
    vecs = np.zeros((n, h.n), np.float32)
    vecs[found] = payload
    as_of = np.zeros(n, np.int64)
    mids = np.zeros(n, np.uint32)
    as_of[found], mids[found] = rec["as_of"], rec["model_id"]
    return vecs, found, as_of, mids


# -- neighbour lists --------------------------------------------------------------------------------
def encode_neighbours(neighbor_ids, scores, as_of, model_version: str) -> bytes:
    """One user's neighbour list (best first) -> value bytes."""
    ids = np.asarray(neighbor_ids, dtype="<i8").reshape(-1)
    sc = np.asarray(scores, dtype="<f4").reshape(-1)
    if ids.size != sc.size or ids.size > 65535:
        raise ValueError(
            f"neighbour ids ({ids.size}) and scores ({sc.size}) must have one equal length <= 65535"
        )
    header = HEADER.pack(FORMAT_VERSION, NEIGHBOURS, ids.size, epoch_ms(as_of), model_id(model_version))
    return header + ids.tobytes() + sc.tobytes()


def encode_neighbour_lists(
    neighbor_ids: Sequence, scores: Sequence, as_of, model_version: str
) -> list[bytes]:
    """Many users' lists (ragged allowed) -> one value each."""
    return [encode_neighbours(i, s, as_of, model_version) for i, s in zip(neighbor_ids, scores, strict=True)]


# -- neighbour lists: the batch fast path ---------------------------------------------------------
@functools.lru_cache(maxsize=64)
def neighbours_dtype(k: int) -> np.dtype:
    """The numpy record layout of one encoded neighbour list of ``k`` entries (header + ids + scores)."""
    return np.dtype(
        [
            ("version", "u1"),
            ("kind", "u1"),
            ("n", "<u2"),
            ("as_of", "<i8"),
            ("model_id", "<u4"),
            ("ids", "<i8", (k,)),
            ("scores", "<f4", (k,)),
        ]
    )


def encode_neighbour_table(
    neighbor_ids: np.ndarray, scores: np.ndarray, as_of, model_version: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n, k) neighbour ids and scores, padding -1 dropped -> (positions, uint8 rows) per list length.

    Each yielded ``rows`` is (m, value_size) and row j holds exactly the bytes `encode_neighbours`
    writes for list ``positions[j]``; lists of equal length share one record array (the fast path of
    the graph's publish, where nearly every list is full). Kept entries stay in their order.
    """
    ids = np.asarray(neighbor_ids, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float32)
    if ids.ndim != 2 or ids.shape != sc.shape:
        raise ValueError(f"neighbour ids {ids.shape} and scores {sc.shape} must be one (n, k) shape")
    if ids.shape[1] > 65535:
        raise ValueError(f"neighbour lists of {ids.shape[1]} entries, over 65535")
    keep = ids >= 0
    counts = keep.sum(axis=1)
    if not keep.all():  # move each row's kept entries to its front, in order (a stable sort of ~keep)
        front = np.argsort(~keep, axis=1, kind="stable")
        ids, sc = np.take_along_axis(ids, front, 1), np.take_along_axis(sc, front, 1)
    stamp, mid = epoch_ms(as_of), model_id(model_version)
    for k in np.unique(counts).tolist():
        at = np.flatnonzero(counts == k)
        rec = np.empty(len(at), dtype=neighbours_dtype(k))
        rec["version"], rec["kind"], rec["n"] = FORMAT_VERSION, NEIGHBOURS, k
        rec["as_of"], rec["model_id"] = stamp, mid
        rec["ids"], rec["scores"] = ids[at, :k], sc[at, :k]
        yield at, rec.view(np.uint8).reshape(len(at), rec.dtype.itemsize)


def decode_neighbours(value: bytes) -> tuple[np.ndarray, np.ndarray, Header]:
    """Value bytes -> (neighbour ids int64 (k,), scores float32 (k,), header)."""
    h = read_header(value)
    if h.kind != NEIGHBOURS:
        raise FormatError(f"value kind {h.kind} is not a neighbour list")
    if len(value) != HEADER_SIZE + 12 * h.n:
        raise FormatError(
            f"neighbour value of {len(value)} bytes, its header says k={h.n} ({HEADER_SIZE + 12 * h.n} bytes)"
        )
    ids = np.frombuffer(value, dtype="<i8", count=h.n, offset=HEADER_SIZE).astype(np.int64)
    sc = np.frombuffer(value, dtype="<f4", count=h.n, offset=HEADER_SIZE + 8 * h.n).astype(np.float32)
    return ids, sc, h
