"""Calibration gives up early, with a clear verdict, when no setting can reach the target recall."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from store.graph.exact_sample import CALIBRATION_SALT, exact_check
from store.graph.index import build_index, choose_spec
from store.graph.settings import GraphSettings
from store.graph.tune import RecallUnreachable, calibrate, knob, unreachable
from store.graph.vectors import UserVectors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(n: int, dim: int, clusters: int | None, seed: int = 0) -> UserVectors:
    rng = np.random.default_rng(seed)
    if clusters is None:  # near-uniform on the sphere: what an untrained encoder produces
        x = rng.standard_normal((n, dim))
    else:  # tight planted clusters: what a trained encoder produces
        centres = rng.standard_normal((clusters, dim)) * 4
        x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    return UserVectors(np.arange(n, dtype=np.int64), unit(x))


# The cap scans 8 % of the lists: the proportion of nprobe 256 of the 4000 lists of a 1M-user graph
CFG = GraphSettings(index="ivf", ivf_nlist=400, target_recall=0.95, calibration_sample=300, max_nprobe=32)


def check_of(uv):
    """The calibration sample (300 users) and their exact top 20."""
    return exact_check(uv, CFG.calibration_sample, CALIBRATION_SALT, 20)


def test_uniform_vectors_get_an_early_verdict():
    uv = vectors(20_000, 32, None)
    spec = choose_spec(len(uv), CFG, uv.dim)
    index = build_index(uv, spec, CFG)
    t0 = time.perf_counter()
    with pytest.raises(RecallUnreachable, match=r"cannot reach 0\.95") as exc:
        calibrate(index, spec, uv, check_of(uv), CFG.target_recall, CFG.max_nprobe)
    assert "nprobe" in str(exc.value) and time.perf_counter() - t0 < 60


def test_clustered_vectors_reach_the_target():
    uv = vectors(20_000, 32, 40)
    spec = choose_spec(len(uv), CFG, uv.dim)
    index = build_index(uv, spec, CFG)
    chosen, tried = calibrate(index, spec, uv, check_of(uv), CFG.target_recall, CFG.max_nprobe)
    assert tried[-1]["recall"] >= 0.95 and chosen.nprobe == tried[-1]["nprobe"]


def test_the_extrapolation_is_generous_near_the_target():
    climbing = [{"nprobe": 4, "recall": 0.70}, {"nprobe": 8, "recall": 0.80}, {"nprobe": 16, "recall": 0.88}]
    assert unreachable(climbing, "nprobe", 256, 0.95) is None  # still climbing fast: keep going
    flat = [{"nprobe": 4, "recall": 0.10}, {"nprobe": 8, "recall": 0.12}, {"nprobe": 16, "recall": 0.14}]
    assert "cannot reach" in unreachable(flat, "nprobe", 256, 0.95)
    assert unreachable(flat[:2], "nprobe", 256, 0.95) is None  # too few measurements to judge


def test_a_floor_keeps_the_knob_from_going_down():
    uv = vectors(20_000, 32, 40)
    spec = choose_spec(len(uv), CFG, uv.dim)
    index = build_index(uv, spec, CFG)
    chosen, tried = calibrate(index, spec, uv, check_of(uv), 0.5, CFG.max_nprobe, floor=16)
    assert [t["nprobe"] for t in tried] == [16] and chosen.nprobe == 16  # 4 and 8 would do, not tried
    assert knob(chosen) == 16 and knob(replace(spec, kind="flat")) is None
