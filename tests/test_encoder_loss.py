"""The training loss and optimiser: full softmax vs sampled softmax chosen by catalogue size, and the
sparse/dense optimiser split (hashed tables: lazy Adam on touched rows; the rest: AdamW)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.datasets.synthetic import SyntheticConfig, generate
from encoder.config import ModelConfig
from encoder.data import chunk_rows, events_to_sequences, item_catalogue, leave_last_out
from encoder.features import featurize, hash_items
from encoder.model import UserEncoder
from encoder.objectives import choose_loss, full_softmax
from encoder.optim import EncoderOptimizer, lr_factor
from encoder.settings import TrainSettings
from encoder.train import _batch_loss, draw_negatives, fit, idle_before_next, loss_inputs

torch.set_num_threads(1)  # shared test machine
CFG = ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=20, item_buckets=2**10, attr_buckets=2**8)
POS = ["click", "conversion", "view"]


@pytest.fixture(scope="module")
def data():
    log = generate(SyntheticConfig(n_users=120, n_items=200, n_clusters=3, hours=12, base_events_per_user=40))
    seq = events_to_sequences(log.events)
    return leave_last_out(seq, POS, 3), item_catalogue(seq, CFG.attributes)


def test_auto_loss_is_full_softmax_up_to_the_threshold_then_sampled():
    assert choose_loss("auto", 18_357, 65_536) == "full_softmax"
    assert choose_loss("auto", 65_536, 65_536) == "full_softmax"
    assert choose_loss("auto", 65_537, 65_536) == "sampled_softmax"
    assert choose_loss("auto", 10**8, 65_536) == "sampled_softmax"
    assert choose_loss("sampled_softmax", 10, 65_536) == "sampled_softmax"  # explicit choice wins
    assert choose_loss("full_softmax", 10**6, 65_536) == "full_softmax"
    # the default: full softmax only while the catalogue is a few times the uniform negatives
    default = TrainSettings()
    assert default.full_softmax_max_items <= 4 * default.negatives
    assert choose_loss("auto", 1_682, default.full_softmax_max_items) == "full_softmax"  # ML-100K
    assert choose_loss("auto", 18_357, default.full_softmax_max_items) == "sampled_softmax"  # Sports
    with pytest.raises(ValueError, match="loss must be one of"):
        choose_loss("softmax", 10, 10)


def test_full_softmax_is_cross_entropy_over_every_item():
    torch.manual_seed(0)
    user = F.normalize(torch.randn(5, 8), dim=-1)
    items = F.normalize(torch.randn(50, 8), dim=-1)
    target = torch.tensor([0, 7, 7, 49, 3])
    want = F.cross_entropy(user @ items.T / 0.1, target)
    (got,) = full_softmax(user, items, [(torch.arange(5), target)], 0.1)
    assert torch.allclose(got, want, atol=1e-5)
    # two target sets over shared user rows: each is the cross-entropy of its own rows
    first, second = full_softmax(
        user, items, [(torch.tensor([0, 2]), target[:2]), (torch.tensor([4]), target[4:])], 0.1
    )
    assert torch.allclose(first, F.cross_entropy(user[[0, 2]] @ items.T / 0.1, target[:2]), atol=1e-5)
    assert torch.allclose(second, F.cross_entropy(user[[4]] @ items.T / 0.1, target[4:]), atol=1e-5)
    # label smoothing: F.cross_entropy's, over every item, for each set of the shared pass
    (smooth,) = full_softmax(user, items, [(torch.arange(5), target)], 0.1, 0.2)
    assert torch.allclose(
        smooth, F.cross_entropy(user @ items.T / 0.1, target, label_smoothing=0.2), atol=1e-5
    )
    _, tail = full_softmax(
        user, items, [(torch.tensor([0, 2]), target[:2]), (torch.tensor([4]), target[4:])], 0.1, 0.3
    )
    assert torch.allclose(
        tail, F.cross_entropy(user[[4]] @ items.T / 0.1, target[4:], label_smoothing=0.3), atol=1e-5
    )


def test_loss_inputs_follow_the_catalogue_size(data):
    split, cat = data
    train = chunk_rows(split.train, CFG.max_len)
    small = loss_inputs(CFG, TrainSettings(), train, cat, POS, "cpu")
    assert small.kind == "full_softmax" and small.logq is None
    assert small.catalogue_idx.shape == (len(cat), len(CFG.features), CFG.n_hashes)
    big = loss_inputs(CFG, TrainSettings(full_softmax_max_items=len(cat) - 1), train, cat, POS, "cpu")
    assert big.kind == "sampled_softmax" and big.logq is not None and big.catalogue_idx is None
    assert (small.label_smoothing, big.label_smoothing) == (0.1, 0.0)  # resolved once, by the loss
    # uniform negatives are drawn from the catalogue and hashed per step (the catalogue never is)
    mixed = TrainSettings(full_softmax_max_items=len(cat) - 1, negatives=8)
    drawn = loss_inputs(CFG, mixed, train, cat, POS, "cpu")
    assert drawn.catalogue_idx is None
    model = UserEncoder(CFG)
    assert draw_negatives(model, drawn, 0, np.random.default_rng(0), "cpu") is None
    negatives = draw_negatives(model, drawn, mixed.negatives, np.random.default_rng(0), "cpu")
    assert negatives.vectors.shape == (8, CFG.d_model) and set(negatives.ids.tolist()) <= set(
        cat.ids.tolist()
    )
    rows = cat.index(negatives.ids.numpy())
    every = model.item_vectors(hash_items(cat.ids, CFG, cat.attributes))  # (I, D)
    assert torch.allclose(negatives.vectors, every[torch.from_numpy(rows)], atol=1e-6)


# None: the full softmax's default smoothing (encoder.settings.LABEL_SMOOTHING)
@pytest.mark.parametrize(("setting", "label_smoothing"), [(None, 0.1), (0.0, 0.0), (0.2, 0.2)])
def test_full_softmax_batch_loss_equals_a_hand_computed_cross_entropy(data, setting, label_smoothing):
    split, cat = data
    train = chunk_rows(split.train, CFG.max_len)
    ts = TrainSettings(objectives={"next_positive": 1.0}, positive_event_types=POS, label_smoothing=setting)
    inputs = loss_inputs(CFG, ts, train, cat, POS, "cpu")
    model = UserEncoder(CFG).eval()  # no dropout: deterministic
    batch = featurize(train.slice(0, 16), CFG)
    got = _batch_loss(model, batch, ts, inputs, np.random.default_rng(0), torch.Generator(), "cpu")
    # by hand: every position with a later positive, its next positive's catalogue row as the class;
    # each row's last such position is its query at position 0 "from the newest", as at inference
    action = batch.action.numpy()
    pos_idx = set(inputs.positive_idx.tolist())
    queries = []  # (b, t, class)
    for b in range(len(batch)):
        real = [t for t in range(action.shape[1]) if batch.valid[b, t]]
        for t in real:
            nxt = [j for j in real if j > t and action[b, j] in pos_idx]
            if nxt:
                queries.append((b, t, int(cat.index(np.array([int(batch.item_id[b, nxt[0]])]))[0])))
    newest = torch.full((len(batch),), action.shape[1] - 1)
    for b, t, _ in queries:
        newest[b] = t
    with torch.no_grad():
        hour, weekday = (batch.ts // 3_600_000) % 24, (batch.ts // 86_400_000 + 3) % 7
        idle = idle_before_next(batch, torch.Generator(), CFG.n_time_buckets)  # the step's own draws
        user = model.encode_positions(batch, hour, weekday, newest=newest, idle=idle)
        items = model.item_vectors(inputs.catalogue_idx)
    logits = torch.stack([user[b, t] @ items.T / ts.temperature for b, t, _ in queries])
    want = F.cross_entropy(logits, torch.tensor([c for _, _, c in queries]), label_smoothing=label_smoothing)
    assert torch.allclose(got.detach(), want, atol=1e-4)


def test_sparse_tables_update_only_touched_rows_and_clipping_covers_both_kinds():
    torch.manual_seed(0)
    model = UserEncoder(CFG)
    opt = model.configure_optimizer(1e-2, 0.0)
    table = model.tables["item"].weight
    before = table.detach().clone()
    rows = torch.tensor([[[3, 9], [0, 0], [0, 0], [0, 0]]])  # (N=1, A, H): item rows 3 and 9 only
    loss = model.item_vectors(rows).sum() + model.head.weight.sum()
    loss.backward()
    assert table.grad.is_sparse and not model.head.weight.grad.is_sparse
    dense_norm = model.head.weight.grad.norm()
    sparse_norm = table.grad.coalesce().values().norm()
    grads = (model.head.weight.grad.clone(), table.grad.coalesce().values().clone())
    unclipped = opt.clip_grad_norm(1e6)  # far above the norm: every gradient stays exactly as it was
    assert torch.equal(model.head.weight.grad, grads[0]) and torch.equal(table.grad.values(), grads[1])
    total = opt.clip_grad_norm(0.5)
    assert isinstance(total, torch.Tensor)  # no host sync inside: the caller decides when to read it
    assert (
        float(total)
        == float(unclipped)
        == pytest.approx(float((dense_norm**2 + sparse_norm**2).sqrt()), rel=1e-5)
    )
    clipped = (model.head.weight.grad.norm() ** 2 + table.grad.coalesce().values().norm() ** 2).sqrt()
    assert float(clipped) == pytest.approx(0.5, rel=1e-4)
    opt.step()
    changed = (table.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 9]  # lazy Adam: untouched rows (and the padding row 0) stay as they were
    # the state round-trips (checkpoint / resume)
    again = EncoderOptimizer(model.param_groups(0.0), 1e-2)
    again.load_state_dict(opt.state_dict())
    assert again.state_dict()["sparse"]["state"].keys() == opt.state_dict()["sparse"]["state"].keys()
    opt.set_lr(lr_factor(0, 10, 2))
    assert {g["lr"] for g in opt.param_groups} == {1e-2 * 0.5}
    # the hashed tables may run at a multiple of the dense rate, through warmup and decay alike
    scaled = model.configure_optimizer(1e-2, 0.0, table_lr_scale=4.0)
    scaled.set_lr(0.5)
    assert {g["lr"] for g in scaled.dense.param_groups} == {1e-2 * 0.5}
    assert {g["lr"] for g in scaled.sparse.param_groups} == {4e-2 * 0.5}


@pytest.mark.parametrize(
    "loss, negatives", [("full_softmax", 0), ("sampled_softmax", 0), ("sampled_softmax", 32)]
)
def test_both_losses_learn(data, loss, negatives):
    split, cat = data
    ts = TrainSettings(
        epochs=4,
        batch_size=16,
        lr=3e-3,
        loss=loss,
        negatives=negatives,
        positive_event_types=POS,
        eval_users=200,
        patience=9,
    )
    result = fit(CFG, ts, split, cat, POS, show_progress=False)
    assert len(result.history) == 4
    assert result.history[-1]["loss"] < result.history[0]["loss"]  # it learns
    assert result.best_valid_ndcg10 > 0.0


@pytest.mark.parametrize("window_hours", [3.0, None])  # None: the window counts events (no clock)
def test_objectives_sharing_one_full_softmax_pass_add_up_to_their_separate_losses(data, window_hours):
    split, cat = data
    train = chunk_rows(split.train, CFG.max_len)
    model = UserEncoder(CFG).eval()
    batch = featurize(train.slice(0, 24), CFG)

    def loss(objectives):
        ts = TrainSettings(objectives=objectives, positive_event_types=POS, window_hours=window_hours)
        inputs = loss_inputs(CFG, ts, train, cat, POS, "cpu")
        gen = torch.Generator().manual_seed(7)  # the same future-window draws each time
        return _batch_loss(model, batch, ts, inputs, np.random.default_rng(0), gen, "cpu").detach()

    both = loss({"next_positive": 1.0, "future_window": 0.5})
    apart = loss({"next_positive": 1.0}) + 0.5 * loss({"future_window": 1.0})
    assert torch.allclose(both, apart, atol=1e-5)


@pytest.mark.parametrize("loss_kind", ["full_softmax", "sampled_softmax"])
def test_label_smoothing_reaches_every_objective_of_either_loss(data, loss_kind):
    """The step's loss is (1 - e) x the target's cross-entropy + e x the spread term for every objective,
    so with the same draws it is linear in e, and e = 0 is the unsmoothed loss; unset, e follows the loss."""
    split, cat = data
    train = chunk_rows(split.train, CFG.max_len)
    model = UserEncoder(CFG).eval()
    batch = featurize(train.slice(0, 24), CFG)

    def loss(label_smoothing):
        ts = TrainSettings(
            objectives={"next_positive": 1.0, "future_window": 0.5},
            positive_event_types=POS,
            loss=loss_kind,
            negatives=16,
            label_smoothing=label_smoothing,
        )
        inputs = loss_inputs(CFG, ts, train, cat, POS, "cpu")
        gen = torch.Generator().manual_seed(7)  # the same future-window draws each time
        return _batch_loss(model, batch, ts, inputs, np.random.default_rng(0), gen, "cpu").detach()

    plain, low, mid, high = loss(0.0), loss(1e-9), loss(0.2), loss(0.4)
    assert torch.isfinite(mid) and torch.allclose(plain, low, atol=1e-6)
    assert not torch.allclose(mid, plain, atol=1e-3)
    assert torch.allclose(mid, (plain + high) / 2, atol=1e-5)
    # unset, it follows the loss: smoothed over every item, not over the sampled candidates
    assert torch.allclose(loss(None), loss(0.1 if loss_kind == "full_softmax" else 0.0), atol=1e-6)
    assert TrainSettings().label_smoothing_for(loss_kind) == (0.1 if loss_kind == "full_softmax" else 0.0)
    assert TrainSettings(label_smoothing=0.3).label_smoothing_for(loss_kind) == 0.3
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainSettings(label_smoothing=1.0)


def test_without_timestamps_the_future_window_counts_events(tmp_path):
    from encoder.data import read_sasrec
    from encoder.train import settings_for_data

    path = tmp_path / "tiny.txt"
    path.write_text("1 10 11 12\n2 11 12 13 14\n")
    sasrec = read_sasrec(path)  # item ids only: ts is the event's index
    both = TrainSettings()
    assert set(both.objectives) == {"next_positive", "future_window"}
    untimed = settings_for_data(both, sasrec)
    assert untimed.objectives == {"next_positive": 1.0, "future_window": both.untimed_window_weight}
    assert untimed.window_hours is None  # the window is the next `window_events` events
    off = settings_for_data(TrainSettings(untimed_window_weight=0.0), sasrec)
    assert off.objectives == {"next_positive": 1.0}
    log = generate(SyntheticConfig(n_users=5, n_items=20, hours=2))
    timed = settings_for_data(both, events_to_sequences(log.events))
    assert (timed.objectives, timed.window_hours) == (both.objectives, both.window_hours)  # real time
    with pytest.raises(ValueError, match="needs next_positive"):
        settings_for_data(TrainSettings(objectives={"future_window": 1.0}), sasrec)
    with pytest.raises(ValueError, match="window_events"):  # an empty window is a configuration error
        TrainSettings(window_events=0)
    with pytest.raises(ValueError, match="untimed_window_weight"):
        TrainSettings(untimed_window_weight=-0.1)


def test_target_weight_and_batching_follow_the_data_unless_set(tmp_path):
    """None (the defaults): each target weighs the same and batches are uniformly random on SASRec
    files; each batch weighs the same and batches come from sorted groups of 16 on event logs, where each
    was measured to pay. An explicit value is kept on either."""
    from encoder.data import read_sasrec
    from encoder.train import settings_for_data

    path = tmp_path / "tiny.txt"
    path.write_text("1 10 11 12\n2 11 12 13 14\n")
    sasrec = read_sasrec(path)
    events = events_to_sequences(generate(SyntheticConfig(n_users=5, n_items=20, hours=2)).events)
    default = TrainSettings()
    assert (default.equal_target_weight, default.length_group_batches) == (None, None)
    untimed, timed = settings_for_data(default, sasrec), settings_for_data(default, events)
    assert (untimed.equal_target_weight, untimed.length_group_batches) == (True, 1)
    assert (timed.equal_target_weight, timed.length_group_batches) == (False, 16)
    kept = settings_for_data(TrainSettings(equal_target_weight=False, length_group_batches=4), sasrec)
    assert (kept.equal_target_weight, kept.length_group_batches) == (False, 4)
    explicit = TrainSettings(equal_target_weight=True, length_group_batches=4)
    assert settings_for_data(explicit, events) is explicit


@pytest.mark.parametrize(
    "loss, table_lr_scale, want",
    [("full_softmax", None, 4.0), ("sampled_softmax", None, 16.0), ("auto", None, 4.0), ("auto", 2.5, 2.5)],
)
def test_tables_learn_at_the_rate_of_the_loss_trained_unless_set(
    data, monkeypatch, loss, table_lr_scale, want
):
    # by default the tables' rate follows the loss actually trained ("auto" resolves by catalogue size:
    # this 200-item catalogue takes the full softmax); an explicit train.table_lr_scale always wins
    split, cat = data
    seen = []
    build = UserEncoder.configure_optimizer

    def spy(self, lr, weight_decay, betas=(0.9, 0.98), table_lr_scale=1.0):
        seen.append(table_lr_scale)
        return build(self, lr, weight_decay, betas, table_lr_scale)

    monkeypatch.setattr(UserEncoder, "configure_optimizer", spy)
    ts = TrainSettings(
        epochs=1,
        batch_size=64,
        loss=loss,
        table_lr_scale=table_lr_scale,
        positive_event_types=POS,
        eval_users=20,
    )
    fit(CFG, ts, split, cat, POS, show_progress=False)
    assert seen == [want]
