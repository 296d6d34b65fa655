"""Exact neighbours of a fixed sample of users, carried from one build to the next.

Every build compares the graph with exact search on samples of users: calibration (``graph.
calibration_sample``) picks the knob on one, the recall check (``graph.recall_sample``) reports on
another. Brute force costs S x N x D per sample: at 10M users, 1,000 users each, ~20 s apiece on 2
cores, and the 10M hour's calibration took 49-78 s in all. An hour moves only the touched users'
vectors, so last hour's exact lists stay exact apart from the touched users (10M: 18 s for both):

* **The samples** are the users with the smallest ``splitmix64(id ^ salt)`` (one salt per sample):
  unbiased (the hash ignores the vectors) and stable from hour to hour; new users may enter a sample,
  forgotten users leave it. `ExactSample` holds the union of both samples' rows.
* **Each sample user's list** holds its exact top ``depth`` entries (deeper than k) and a ``cut``:
  every user not in the list scores at most the cut (its last entry's score).
* **An hour** (`carry_exact`): a sample user that was not touched drops the touched and forgotten users
  from its list (their scores changed or they are gone) and scores the touched users by brute force
  (S x T instead of S x N); touched users scoring above the cut join the list, in order, and the cut
  holds: every user not listed still scores at most the cut. A list left with fewer than k entries,
  a touched sample user, and a new member of a sample are searched in full.

The lists are written beside the snapshot (``exact_sample.npz``). A randomized test carries them
through hours of touched, new and forgotten users and compares them with brute force every hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.hashing import splitmix64
from store.graph.knn import PAD, exact_neighbours, exact_top
from store.graph.vectors import UserVectors

EXACT_FILE = "exact_sample.npz"
Check = tuple[np.ndarray, np.ndarray]  # a sample's (rows in the build's vectors, exact top-k ids (n, k))
CALIBRATION_SALT = 13  # the calibration sample's hash salt is seed + this
RECALL_SALT = 7  # the recall sample's hash salt is seed + this


class SampleKey(NamedTuple):
    """What a build's sample lists are made for; lists made for another key are not carried."""

    seed: int  # graph.seed
    calibration: int  # graph.calibration_sample: users in the calibration sample
    recall: int  # graph.recall_sample: users in the recall sample
    k: int  # graph.k

    @property
    def depth(self) -> int:
        """Entries kept per list: 2k (with ~10 % of users touched an hour, k or more stay exact)."""
        return 2 * self.k

    def members(self, uv: UserVectors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both samples among ``uv``'s users, hashed once a build: (their union's ids (M,) sorted, which
        of them are in the calibration sample (M,) bool, which in the recall sample (M,) bool)."""
        cal = sample_ids(uv.ids, self.calibration, self.seed + CALIBRATION_SALT)
        rec = sample_ids(uv.ids, self.recall, self.seed + RECALL_SALT)
        ids = np.union1d(cal, rec)
        return ids, np.isin(ids, cal), np.isin(ids, rec)


@dataclass
class ExactSample:
    """Exact lists of the sample users at one build's vectors."""

    ids: np.ndarray  # (M,) int64 sample user ids (both samples' union), sorted
    nbr_ids: np.ndarray  # (M, depth) int64 exact neighbours, best first, PAD after the list's end
    scores: np.ndarray  # (M, depth) float32, -inf after the list's end
    cut: np.ndarray  # (M,) float32: every user not in the row's list scores at most this
    in_calibration: np.ndarray  # (M,) bool: the row's user is in the calibration sample
    in_recall: np.ndarray  # (M,) bool: ... in the recall sample
    key: SampleKey  # what it was made for

    def checks(self, uv: UserVectors) -> tuple[Check, Check]:
        """The calibration and recall samples, each as (rows in ``uv``, exact top-k ids (n, k))."""
        cal, rec = (
            (uv.positions(self.ids[m]), self.nbr_ids[m, : self.key.k])
            for m in (self.in_calibration, self.in_recall)
        )
        return cal, rec

    def save(self, path: Path) -> None:
        arrays = {
            f: getattr(self, f) for f in ("ids", "nbr_ids", "scores", "cut", "in_calibration", "in_recall")
        }
        np.savez(path / EXACT_FILE, **arrays, key=np.array(self.key, np.int64))

    @classmethod
    def load(cls, path: Path) -> ExactSample | None:
        """The lists saved beside a snapshot, None when it has none (older snapshots)."""
        file = path / EXACT_FILE
        if not file.is_file():
            return None
        with np.load(file) as z:
            key = SampleKey(*(int(v) for v in z["key"]))
            return cls(
                z["ids"], z["nbr_ids"], z["scores"], z["cut"], z["in_calibration"], z["in_recall"], key
            )


def sample_ids(ids: np.ndarray, size: int, salt: int) -> np.ndarray:
    """The ``size`` users of ``ids`` with the smallest splitmix64(id ^ salt), sorted by id."""
    if size >= len(ids):
        return ids.copy()
    h = splitmix64(ids.astype(np.uint64) ^ np.uint64(salt))
    return np.sort(ids[np.argpartition(h, size - 1)[:size]])


def exact_lists(uv: UserVectors, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute force: (ids (n, width), scores (n, width), cut (n,)) of the users at ``rows``."""
    ids, scores = exact_neighbours(uv, rows, width)
    return ids, scores, scores[:, -1].copy()


def exact_check(uv: UserVectors, size: int, salt: int, k: int) -> Check:
    """A one-off sample (not carried): the ``size`` users of ``uv`` with the smallest hashes, with their
    exact top k (the touched users' own index calibrates on it)."""
    rows = uv.positions(sample_ids(uv.ids, size, salt))
    return rows, exact_neighbours(uv, rows, k)[0]


def fresh_exact(
    uv: UserVectors, key: SampleKey, members: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> ExactSample:
    """Both samples' lists by brute force (a full build, or no usable previous lists). ``members``:
    ``key.members(uv)`` when the caller has it already (each build hashes the ids once)."""
    ids, in_cal, in_rec = key.members(uv) if members is None else members
    return ExactSample(ids, *exact_lists(uv, uv.positions(ids), key.depth), in_cal, in_rec, key)


def carry_exact(
    prev: ExactSample | None, uv: UserVectors, touched_ids: np.ndarray, key: SampleKey, block: int = 262_144
) -> tuple[ExactSample, dict]:
    """This build's sample lists from the previous build's (see the module docstring) and what it cost:
    ``exact_carried`` rows updated from the touched users alone, ``exact_searched`` rows searched in full.

    ``uv``: this build's vectors; ``touched_ids``: the users whose vectors changed or are new since
    ``prev`` (users of ``prev`` missing from ``uv`` were forgotten). ``block``: touched users scored per
    brute-force call (its scratch memory: block x D floats)."""
    ids, in_cal, in_rec = key.members(uv)
    if prev is None or prev.key != key or not len(ids):
        return fresh_exact(uv, key, (ids, in_cal, in_rec)), {"exact_carried": 0, "exact_searched": len(ids)}
    t_rows = uv.positions(touched_ids)
    t_rows = t_rows[t_rows >= 0]
    at = np.minimum(np.searchsorted(prev.ids, ids), len(prev.ids) - 1)
    carry = np.flatnonzero((prev.ids[at] == ids) & ~uv.marked(ids, t_rows))  # known, and did not move
    width = key.depth
    nbr = np.full((len(ids), width), PAD, np.int64)
    scores = np.full((len(ids), width), -np.inf, np.float32)
    cut = np.full(len(ids), np.inf, np.float32)
    if len(carry):
        old = at[carry]
        c_cut = prev.cut[old]
        gone = (uv.positions(prev.nbr_ids[old]) < 0) | uv.marked(
            prev.nbr_ids[old], t_rows
        )  # forgotten, moved
        c_ids = np.where(gone, PAD, prev.nbr_ids[old])  # (c, depth)
        c_scores = np.where(gone, -np.inf, prev.scores[old])
        queries = uv.vectors[uv.positions(ids[carry])]  # (c, D)
        for lo in range(0, len(t_rows), block):
            t = t_rows[lo : lo + block]
            t_scores, t_pos = exact_top(queries, uv.vectors[t], width)  # (c, depth)
            above = (t_scores > c_cut[:, None]) & (t_pos >= 0)  # below the cut: order vs unlisted unknown
            t_ids = np.where(above, uv.ids[t[np.maximum(t_pos, 0)]], PAD)
            c_ids, c_scores = best_of(c_ids, c_scores, t_ids, np.where(above, t_scores, -np.inf), width)
        # a full list may have dropped entries beyond its depth: the bound on unlisted users rises to its
        # last score (every kept entry scores at least the old cut, so this never lowers it)
        full = c_ids[:, -1] != PAD
        nbr[carry], scores[carry] = c_ids, c_scores
        cut[carry] = np.where(full, np.maximum(c_cut, c_scores[:, -1]), c_cut)
    # searched in full: new members and moved users (cut still +inf), and lists left with fewer than k
    # entries while users remain unlisted (a cut of -inf means every other user is listed)
    short = (nbr[:, key.k - 1] == PAD) & (cut > -np.inf)
    search = np.flatnonzero(short | (cut == np.inf))
    if len(search):
        nbr[search], scores[search], cut[search] = exact_lists(uv, uv.positions(ids[search]), width)
    stats = {"exact_carried": len(ids) - len(search), "exact_searched": len(search)}
    return ExactSample(ids, nbr, scores, cut, in_cal, in_rec, key), stats


def best_of(
    a_ids: np.ndarray, a_scores: np.ndarray, b_ids: np.ndarray, b_scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of two disjoint candidate sets (PAD / -inf entries last)."""
    ids = np.concatenate([a_ids, b_ids], axis=1)
    scores = np.concatenate([a_scores, b_scores], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    return np.where(np.isfinite(scores), ids, PAD), scores
