"""Value format and key layout (docs/format.md): exact bytes, every dtype, both encoder paths."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from store import format as fmt
from store.keys import Keys, bucket_of, check_name, splitmix64

AS_OF = 1_767_225_600_000  # 2026-01-01T00:00Z in ms


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("float32", 0.0), ("int8", 1.0 / 127)])
def test_round_trip_every_dtype_reference_equals_fast_path(dtype, tol):
    x = unit(50, 64)
    rows = fmt.encode_vectors(x, AS_OF, "m-1", dtype)  # (n, value_size) uint8
    assert rows.shape == (50, fmt.value_size(dtype, 64))
    for i in range(50):  # the numpy batch path writes exactly the bytes of the plain reference path
        assert rows[i].tobytes() == fmt.encode_vector(x[i], AS_OF, "m-1", dtype)
    values = [rows[i].tobytes() for i in range(50)]
    values[3] = None
    vecs, found, as_of, mids = fmt.decode_vectors(values, dim=64)
    assert found.tolist() == [i != 3 for i in range(50)]
    assert np.all(vecs[3] == 0) and as_of[3] == 0
    assert np.abs(vecs[found] - x[found]).max() <= tol + 1e-7
    assert set(as_of[found]) == {AS_OF} and set(mids[found]) == {fmt.model_id("m-1")}
    ref, header = fmt.decode_vector(values[0])
    np.testing.assert_array_equal(ref, vecs[0])
    assert (header.version, header.kind, header.n, header.as_of) == (1, fmt.KINDS[dtype], 64, AS_OF)


def test_header_bytes_are_exactly_the_documented_layout():
    v = fmt.encode_vector([1.0, -2.0, 0.5], AS_OF, "m-1", "float32")
    assert len(v) == 16 + 12
    assert v[0] == 1 and v[1] == 2  # version, kind float32
    assert struct.unpack_from("<H", v, 2)[0] == 3
    assert struct.unpack_from("<q", v, 4)[0] == AS_OF
    import hashlib

    assert v[12:16] == hashlib.sha256(b"m-1").digest()[:4]
    assert struct.unpack_from("<3f", v, 16) == (1.0, -2.0, 0.5)
    q = fmt.encode_vector([0.5, -1.0, 0.0], AS_OF, "m-1", "int8")
    assert len(q) == 20 + 3 and struct.unpack_from("<f", q, 16)[0] == pytest.approx(1.0 / 127)
    assert struct.unpack_from("<3b", q, 20) == (64, -127, 0)


def test_int8_keeps_cosine_neighbours():
    x = unit(2000, 64, seed=1)
    q, _, _, _ = fmt.decode_vectors([r.tobytes() for r in fmt.encode_vectors(x, AS_OF, "m", "int8")])
    assert np.min(np.sum(q * x, axis=1) / np.linalg.norm(q, axis=1)) > 0.999


def test_neighbour_lists_round_trip_and_ragged():
    ids = [np.array([5, 9, 2**62], np.int64), np.array([], np.int64)]
    scores = [np.array([0.9, 0.5, 0.1], np.float32), np.array([], np.float32)]
    values = fmt.encode_neighbour_lists(ids, scores, AS_OF, "m-1")
    assert len(values[0]) == 16 + 12 * 3 and values[0][1] == fmt.NEIGHBOURS
    got_ids, got_scores, h = fmt.decode_neighbours(values[0])
    np.testing.assert_array_equal(got_ids, ids[0])
    np.testing.assert_array_equal(got_scores, scores[0])
    assert h.as_of == AS_OF and fmt.decode_neighbours(values[1])[0].size == 0
    with pytest.raises(ValueError):
        fmt.encode_neighbours([1, 2], [0.5], AS_OF, "m")


@pytest.mark.parametrize("seed", range(4))
def test_neighbour_table_writes_the_reference_bytes_of_every_list(seed):
    rng = np.random.default_rng(seed)
    n, k = 300, int(rng.integers(1, 30))
    ids = rng.integers(0, 2**62, size=(n, k))
    ids[rng.random((n, k)) < rng.choice([0.0, 0.05, 0.5])] = -1  # padding anywhere, whole rows too
    ids[: n // 10] = -1
    scores = rng.random((n, k)).astype(np.float32)
    seen = np.zeros(n, int)
    for at, rows in fmt.encode_neighbour_table(ids, scores, AS_OF, "m-1"):
        assert rows.dtype == np.uint8 and rows.shape[0] == len(at)
        for j, i in enumerate(at.tolist()):
            keep = ids[i] >= 0
            assert rows[j].tobytes() == fmt.encode_neighbours(ids[i][keep], scores[i][keep], AS_OF, "m-1")
        seen[at] += 1
    assert (seen == 1).all()  # every list exactly once
    with pytest.raises(ValueError, match="one \\(n, k\\) shape"):
        next(fmt.encode_neighbour_table(ids, scores[:, :-1], AS_OF, "m-1"))


def test_bad_values_are_rejected_clearly():
    good = fmt.encode_vector(np.ones(8), AS_OF, "m")
    with pytest.raises(fmt.FormatError, match="shorter"):
        fmt.decode_vector(good[:10])
    with pytest.raises(fmt.FormatError, match="format version"):
        fmt.decode_vector(b"\x02" + good[1:])
    with pytest.raises(fmt.FormatError, match="header says"):
        fmt.decode_vector(good[:-2])
    with pytest.raises(fmt.FormatError, match="mixed"):
        fmt.decode_vectors([good, fmt.encode_vector(np.ones(8), AS_OF, "m", "float32")])
    with pytest.raises(fmt.FormatError, match="not a neighbour list"):
        fmt.decode_neighbours(good)
    with pytest.raises(ValueError, match="dtype"):
        fmt.encode_vectors(np.ones((2, 8)), AS_OF, "m", "bfloat16")


def test_bucket_function_is_splitmix64_as_documented():
    # the first output of the reference SplitMix64 generator seeded with 0 (Steele, Lea, Flood 2014)
    assert int(splitmix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF
    b = bucket_of(np.arange(100_000), 1024)
    counts = np.bincount(b, minlength=1024)
    assert b.min() >= 0 and b.max() < 1024 and counts.min() > 50 and counts.max() < 150  # even spread
    assert bucket_of(-5, 1024)[0] == int(splitmix64(np.array([-5]))[0] % 1024)
    from store.keys import bucket_of_one

    some = np.r_[np.arange(-50, 50), [2**63 - 1, -(2**63), 10**15 + 7]]
    assert [bucket_of_one(i, 1000) for i in some.tolist()] == bucket_of(some, 1000).tolist()


def test_keys_share_the_bucket_hash_tag_and_names_are_checked():
    k = Keys("soe")
    assert k.vectors("m1", 7) == "soe:v:m1:{7}7" and k.neighbours("m2", 7) == "soe:n:m2:{7}7"
    assert k.vectors("m1", 1024 + 7) == "soe:v:m1:{7}1031"  # same tag: same cluster slot
    # the docs/format.md example
    assert k.vectors("m1", int(bucket_of(42, 16384)[0])) == "soe:v:m1:{661}11925"
    for bad in ("", "a b", "x{y}", "m:1", "-m", "m1\n", "../m", "a..b", "m/1", "a" * 129):
        with pytest.raises(ValueError):
            check_name("model version", bad)
        with pytest.raises(ValueError, match="model version"):
            k.vectors(bad, 1)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_single_value_fast_path_equals_batch_path(dtype):
    x = unit(3, 16, seed=3)
    values = [fmt.encode_vector(v, AS_OF + i, "m-2", dtype) for i, v in enumerate(x)]
    batch = fmt.decode_vectors(values)
    for i, v in enumerate(values):
        one = fmt.decode_vectors([v], dim=16)
        for a, b in zip(one, batch):
            np.testing.assert_array_equal(a[0], b[i])
    with pytest.raises(fmt.FormatError, match="expected 8"):
        fmt.decode_vectors([values[0]], dim=8)
