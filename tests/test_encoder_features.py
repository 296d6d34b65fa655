"""Featurisation and data preparation: hashing, time buckets, truncation/padding, splits, objectives."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from core.contracts import EVENT, TS, conform
from encoder.data import chunk_rows, events_to_sequences, item_catalogue, leave_last_out, read_sasrec
from encoder.features import featurize, hash_ids, hash_items, time_buckets
from encoder.model import ModelConfig, UserEncoder
from encoder.objectives import (
    LogQ,
    Negatives,
    future_window_targets,
    next_positive_targets,
    sampled_softmax,
)

torch.set_num_threads(1)  # shared test machine
CFG = ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=4, item_buckets=2**12, attr_buckets=2**8)
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z in ms (a Thursday)


def _events(rows):
    """rows: (user, ts_ms, type, item, category)."""
    u, t, e, i, c = zip(*rows)
    table = pa.table(
        {
            "user_id": pa.array(u, pa.int64()),
            "ts": pa.array(t, pa.int64()).cast(TS),
            "event_type": list(e),
            "item_id": pa.array(i, pa.int64()),
            "category_id": pa.array(c, pa.int64()),
        }
    )
    return conform(table, EVENT)


def test_hash_ids_deterministic_in_range_and_unseen_ids_work():
    ids = np.array([0, 1, -5, 2**62, 5_000_000_123, 123456789012345], dtype=np.int64)
    h = hash_ids(ids, None, "item_id", CFG)
    assert h.shape == (6, CFG.n_hashes)
    assert h.min() >= 1 and h.max() <= CFG.item_buckets - 1  # 0 stays the padding row
    assert np.array_equal(h, hash_ids(ids, None, "item_id", CFG))  # deterministic
    assert not np.array_equal(h[:, 0], h[:, 1])  # independent functions
    assert not np.array_equal(h, hash_ids(ids, None, "category_id", CFG))  # salted per table
    present = np.array([True, False, True, True, True, True])
    assert (hash_ids(ids, present, "item_id", CFG)[1] == 0).all()
    # never-seen ids embed without any vocabulary
    model = UserEncoder(CFG).eval()
    vec = model.item_vectors(hash_items(np.array([9_999_999_999_999, 42]), CFG))
    assert vec.shape == (2, 16) and torch.isfinite(vec).all()


def test_two_hash_functions_make_full_collisions_rare():
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(0, 2**62, 20_000))
    small = ModelConfig(item_buckets=2**10)
    h = hash_ids(ids, None, "item_id", small)
    single = len(ids) - len(np.unique(h[:, 0]))
    pairs = len(ids) - len(np.unique(h[:, 0] * small.item_buckets + h[:, 1]))
    assert single > 15_000  # one hash into 1k buckets: almost everything collides
    assert pairs < 300  # both hashes: ~n^2 / (2 B^2) ~ 190 expected


def test_time_buckets_are_atrank_log2():
    gaps_s = np.array([-5, 0, 1, 2, 3, 7, 8, 3600, 10**12])
    got = time_buckets(gaps_s * 1000, 24)
    assert got.tolist() == [1, 1, 2, 2, 3, 4, 4, 12, 23]  # 1 + floor(log2(1 + s)), capped at 23
    assert time_buckets(np.array([999]), 24).tolist() == [1]  # sub-second gaps share the first bucket


def test_featurize_truncates_left_pads_and_maps_types():
    rows = [(1, T0 + k * 1000, "click" if k % 2 else "view", 100 + k, 7 if k else None) for k in range(6)]
    rows += [(2, T0, "teleport", 900, 1)]
    seq = events_to_sequences(_events(rows))
    as_of = datetime(2026, 1, 1, 5, tzinfo=UTC)
    b = featurize(seq, CFG, as_of=as_of)
    assert b.action.shape == (2, 4) and b.lengths.tolist() == [4, 1]
    assert b.item_id[0].tolist() == [102, 103, 104, 105]  # the newest 4, oldest -> newest
    assert b.item_id[1].tolist() == [-1, -1, -1, 900]  # left padding
    assert b.valid.tolist() == [[True] * 4, [False, False, False, True]]
    assert b.action[1, -1].item() == len(CFG.actions) + 1  # unknown type
    assert b.action[0].tolist() == [CFG.actions.index(t) + 1 for t in ("view", "click", "view", "click")]
    assert (b.attrs[1, :3] == 0).all() and (b.time_bucket[1, :3] == 0).all()
    assert b.hour.tolist() == [5, 5] and b.weekday.tolist() == [3, 3]  # 05:00 on a Thursday
    assert b.time_bucket[0, -1].item() == time_buckets(np.array([5 * 3600_000 - 5000]), 24)[0]
    sel = b.select([1])
    assert sel.action.shape == (1, 1) and sel.item_id.tolist() == [[900]]


def test_gap_to_the_event_before_reads_the_whole_list():
    gaps_s = [0, 1, 7, 3600, 2, 86_400]  # seconds between consecutive events of user 1
    ts = T0 + 1000 * np.cumsum(gaps_s)
    rows = [(1, int(t), "click", 100 + k, None) for k, t in enumerate(ts)] + [(2, T0, "click", 9, None)]
    seq = events_to_sequences(_events(rows))
    cfg = replace(CFG, use_event_gap=True)
    b = featurize(seq, cfg, as_of=T0 + 10**9)  # user 1 keeps the newest 4 of 6 events
    none = cfg.n_time_buckets
    # the oldest kept event (the third) still sees the one before it, outside the kept window
    assert b.gap_bucket[0].tolist() == time_buckets(np.array(gaps_s[2:]) * 1000, none).tolist()
    assert b.gap_bucket[1].tolist() == [0, 0, 0, none]  # padding, then a first event: nothing before it
    # the gaps do not depend on as_of (the time-gap buckets do)
    assert torch.equal(featurize(seq, cfg, as_of=T0 + 10**10).gap_bucket, b.gap_bucket)
    assert featurize(seq.slice(1), cfg).gap_bucket.tolist() == [[none]]  # a sliced table's list offsets
    assert (featurize(seq.drop_columns(["ts"]), cfg, as_of=T0).gap_bucket[0] == none).all()  # no clock
    off = featurize(seq, CFG, as_of=T0 + 10**9)  # off (the default): not computed, every event "none"
    assert off.gap_bucket[0].tolist() == [none] * 4 and torch.equal(off.time_bucket, b.time_bucket)


def test_featurize_null_attribute_is_bucket_zero():
    seq = events_to_sequences(_events([(1, T0, "click", 5, None), (1, T0 + 1, "click", 6, 3)]))
    b = featurize(seq, CFG)
    assert (b.attrs[0, 0, 1] == 0).all() and (b.attrs[0, 1, 1] > 0).all()
    assert (b.attrs[0, :, 2:] == 0).all()  # advertiser/campaign columns are null throughout


def test_leave_last_out_and_chunks():
    types = ["view", "click", "view", "click", "click", "view"]
    rows = [(1, T0 + k, t, 10 + k, 1) for k, t in enumerate(types)] + [(2, T0, "click", 50, 1)]
    seq = events_to_sequences(_events(rows))
    split = leave_last_out(seq, ["click"], min_positives=3)
    assert split.test_target.tolist() == [14] and split.valid_target.tolist() == [13]
    assert split.test["item_id"].to_pylist() == [[10, 11, 12, 13]]
    assert split.valid["item_id"].to_pylist() == [[10, 11, 12]]
    assert split.train["item_id"].to_pylist() == [[10, 11, 12], [50]]  # user 2 trains only
    assert split.test["as_of"].cast(pa.int64()).to_pylist() == [T0 + 3 + 1]  # just after its newest input
    chunks = chunk_rows(seq, 4)
    assert chunks["item_id"].to_pylist() == [[12, 13, 14, 15], [10, 11], [50]]
    cat = item_catalogue(seq)
    assert cat.ids.tolist() == [10, 11, 12, 13, 14, 15, 50]
    assert cat.index(np.array([13, 99])).tolist() == [3, -1]


def test_sasrec_file(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("1 5 6 7\n2 9 5\n\n3 4\n")
    seq = read_sasrec(path)
    assert seq["item_id"].to_pylist() == [[5, 6, 7], [9, 5], [4]]
    assert seq.schema.metadata[b"soe.features"] == b"item_only"
    (tmp_path / "bad.txt").write_text("1 a b\n")
    with pytest.raises(ValueError, match="expected integers"):
        read_sasrec(tmp_path / "bad.txt")


def test_objective_targets():
    pos = torch.tensor([[False, True, False, True, False]])
    assert next_positive_targets(pos).tolist() == [[1, 3, 3, -1, -1]]
    ts = torch.tensor([[0, 10, 20, 30, 40]])
    seen = set()
    for s in range(30):
        tgt = future_window_targets(pos, ts, 25, torch.Generator().manual_seed(s))[0].tolist()
        assert tgt[1:] == [3, 3, -1, -1]  # window 25: from t=1 only index 3 (ts 30 <= 35)
        seen.add(tgt[0])
    assert seen == {1}  # t=0, window (0, 25]: only index 1
    wide = {
        future_window_targets(pos, ts, 100, torch.Generator().manual_seed(s))[0, 0].item() for s in range(40)
    }
    assert wide == {1, 3}  # a random positive of the window, both drawn
    # no clock (SASRec files): the window is the next k events, whatever the timestamps say
    for s in range(30):
        tgt = future_window_targets(pos, ts, None, torch.Generator().manual_seed(s), window_events=2)
        assert tgt[0].tolist()[1:] == [3, 3, -1, -1]  # t=1: (1, 3]; t=2: (2, 4]; t=3: (3, 4] has none
        assert tgt[0, 0].item() == 1  # (0, 2]: index 1 only
    three = {
        future_window_targets(pos, ts, None, torch.Generator().manual_seed(s), window_events=3)[0, 0].item()
        for s in range(40)
    }
    assert three == {1, 3}


def test_sampled_softmax_and_logq():
    torch.manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    ids = torch.tensor([3, 4, 3, 5, 6, 7])
    item[2] = item[0]  # the same item has the same vector
    log_q = torch.tensor([-1.0, -2.0, -1.0, -3.0, -2.5, -0.5])
    got = sampled_softmax(user, item, ids, log_q, 0.1)
    uniq = [0, 1, 3, 4, 5]  # first row of items 3, 4, 5, 6, 7
    logits = user @ item[uniq].T / 0.1 - log_q[uniq]
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 2, 3, 4]))
    assert torch.allclose(got, want, atol=1e-6)
    # logQ from counts: log of the share among positives, unseen ids get the floor
    lq = LogQ(np.array([3, 4, 5]), np.array([2, 1, 1]))
    assert torch.allclose(lq(torch.tensor([3, 4, 99])), torch.log(torch.tensor([0.5, 0.25, 0.25])))
    # the correction removes a pure popularity bias: scores = log q -> corrected logits are flat
    counts = np.array([50, 20, 10, 5])
    lq = LogQ(np.arange(4), counts)
    ids = torch.arange(4)
    q = lq(ids)
    u = torch.ones(4, 1)
    v = q[:, None]  # u . v / 1 = log q
    flat = sampled_softmax(u, v, ids, q, 1.0)
    assert torch.allclose(flat, torch.log(torch.tensor(4.0)), atol=1e-5)
    assert sampled_softmax(u, v, ids, None, 1.0) > flat  # uncorrected: rare targets are penalised


def _four_rows_and_three_draws(seed: int, draws_log_q: torch.Tensor):
    """4 unit user/target rows (items 3, 4, 5, 4: rows 1 and 3 share a target) and 3 uniform draws
    (items 9, 5, 8: item 5 is row 2's own target) from a 10-item catalogue."""
    torch.manual_seed(seed)
    norm = torch.nn.functional.normalize
    user, item = norm(torch.randn(4, 8), dim=-1), norm(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([3, 4, 5, 4])
    item[3] = item[1]
    log_q = torch.tensor([-1.0, -2.0, -3.0, -2.0])
    neg = Negatives(norm(torch.randn(3, 8), dim=-1), torch.tensor([9, 5, 8]), draws_log_q, 10)
    return user, item, ids, log_q, neg


def test_sampled_softmax_with_uniform_negatives_equals_a_hand_computed_mixed_softmax():
    user, item, ids, log_q, neg = _four_rows_and_three_draws(1, torch.tensor([-4.0, -3.0, -5.0]))
    got = sampled_softmax(user, item, ids, log_q, 0.1, neg)
    cand = torch.cat([item[[0, 1, 2]], neg.vectors])  # in-batch items 3, 4, 5, then the draws 9, 5, 8
    count = 4 * torch.cat([log_q[[0, 1, 2]], neg.log_q]).exp() + 3 / 10  # expected count in the candidates
    logits = user @ cand.T / 0.1 - count.log()
    logits[2, 4] = float("-inf")  # row 2's target is item 5: its uniform draw is not a negative
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 1]))
    assert torch.allclose(got, want, atol=1e-5)
    # without draws the mixed correction is plain logQ (a constant log N apart, which softmax ignores)
    assert torch.allclose(
        sampled_softmax(user, item, ids, log_q, 0.1), sampled_softmax(user, item, ids, log_q - 5, 0.1)
    )


def test_label_smoothing_spreads_over_the_candidates_a_query_really_has():
    F = torch.nn.functional
    user, item, ids, log_q, neg = _four_rows_and_three_draws(3, torch.tensor([-4.0, -3.0, -5.0]))
    target = torch.tensor([0, 1, 2, 1])
    # in-batch candidates only, none masked: exactly F.cross_entropy's label smoothing
    got = sampled_softmax(user, item, ids, log_q, 0.1, label_smoothing=0.2)
    logits = user @ item[[0, 1, 2]].T / 0.1 - log_q[[0, 1, 2]]
    assert torch.allclose(got, F.cross_entropy(logits, target, label_smoothing=0.2), atol=1e-5)
    assert torch.allclose(
        sampled_softmax(user, item, ids, log_q, 0.1, label_smoothing=0.0),
        sampled_softmax(user, item, ids, log_q, 0.1),
    )
    # with draws: row 2's own target among the draws is no candidate of row 2, so it takes no share
    got = sampled_softmax(user, item, ids, log_q, 0.1, neg, label_smoothing=0.2)
    assert torch.isfinite(got)
    cand = torch.cat([item[[0, 1, 2]], neg.vectors])
    count = 4 * torch.cat([log_q[[0, 1, 2]], neg.log_q]).exp() + 3 / 10
    want = []
    for r in range(4):
        keep = [0, 1, 2] + [3 + k for k in range(3) if neg.ids[k] != ids[r]]
        log_p = (user[r] @ cand[keep].T / 0.1 - count[keep].log()).log_softmax(dim=-1)
        want.append(-0.8 * log_p[int(target[r])] - 0.2 * log_p.mean())
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-5)


def test_sampled_softmax_with_uniform_negatives_only_sees_its_own_target_and_the_draws():
    user, item, ids, log_q, neg = _four_rows_and_three_draws(2, torch.zeros(3))
    got = sampled_softmax(user, item, ids, log_q, 0.1, neg, in_batch=False)
    want = []
    for r in range(4):  # each row: its own target, then the draws that are not its target; no correction
        draws = [k for k in range(3) if neg.ids[k] != ids[r]]
        logits = user[r] @ torch.cat([item[r : r + 1], neg.vectors[draws]]).T / 0.1
        want.append(torch.nn.functional.cross_entropy(logits[None], torch.tensor([0])))
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-5)
    assert not torch.allclose(got, sampled_softmax(user, item, ids, log_q, 0.1, neg))  # in-batch differs
