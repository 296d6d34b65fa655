"""UserEncoder: shapes, attention kernels, exact padding masking, causality, feature switches,
named tables (and loading positional ones), weight-decay groups by module type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.datasets.synthetic import SyntheticConfig, generate
from encoder.config import ModelConfig
from encoder.data import events_to_sequences, truncate
from encoder.features import featurize, time_buckets
from encoder.model import UserEncoder

torch.set_num_threads(1)  # the test machine is shared: one thread avoids oversubscription

SMALL = dict(d_model=32, n_heads=2, n_layers=2, max_len=40, item_buckets=2**10, attr_buckets=2**8)


@pytest.fixture(scope="module")
def sequences():
    log = generate(SyntheticConfig(n_users=120, n_items=500, n_clusters=4, hours=6, base_events_per_user=30))
    return events_to_sequences(log.events)


def _model(**kw):
    torch.manual_seed(0)
    return UserEncoder(ModelConfig(**{**SMALL, **kw})).eval()


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_shapes_and_unit_norm(sequences, pooling):
    model = _model(pooling=pooling)
    batch = featurize(sequences.slice(0, 16), model.cfg)
    B, T = batch.action.shape
    with torch.no_grad():
        users = model(batch)
        per_pos = model.encode_positions(batch)
    assert users.shape == (16, 32) and per_pos.shape == (B, T, 32)
    assert torch.allclose(users.norm(dim=-1), torch.ones(16), atol=1e-5)
    assert torch.allclose(per_pos[:, -1], users, atol=1e-6)
    items = model.item_vectors(batch.attrs[:, -1])
    assert items.shape == (16, 32) and torch.allclose(items.norm(dim=-1), torch.ones(16), atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_sdpa_kernel_matches_reference_kernel(sequences, pooling):
    model = _model(pooling=pooling)
    batch = featurize(sequences.slice(0, 32), model.cfg)
    assert model.attention == "sdpa"
    with torch.no_grad():
        fast, fast_pos = model(batch), model.encode_positions(batch)
        model.set_attention("reference")
        assert all(b.attn.kernel == "reference" for b in model.blocks)
        ref, ref_pos = model(batch), model.encode_positions(batch)
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(fast_pos, ref_pos, atol=1e-5)
    with pytest.raises(ValueError, match="attention kernel"):
        model.set_attention("flash")


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_vector_does_not_depend_on_batch_or_padding(sequences, pooling):
    model = _model(pooling=pooling)
    lengths = [len(x) for x in sequences["item_id"].to_pylist()[:24]]
    assert min(lengths) < max(lengths)  # the batch really mixes lengths
    with torch.no_grad():
        together = model(featurize(sequences.slice(0, 24), model.cfg))
        alone = torch.cat([model(featurize(sequences.slice(i, 1), model.cfg)) for i in range(24)])
        padded = model(featurize(sequences.slice(0, 24), model.cfg, pad_to=model.cfg.max_len))
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(padded, alone, atol=1e-5)


def test_causal_mask_no_position_sees_the_future(sequences):
    model = _model()
    batch = featurize(sequences.slice(0, 8), model.cfg)
    changed = featurize(sequences.slice(0, 8), model.cfg)
    T = batch.action.shape[1]
    cut = T - 3  # change everything from position cut on
    changed.attrs[:, cut:] = (changed.attrs[:, cut:] * 7 + 3) % 200 + 1
    changed.action[:, cut:] = 1
    with torch.no_grad():
        a, b = model.encode_positions(batch), model.encode_positions(changed)
    assert torch.allclose(a[:, :cut], b[:, :cut], atol=1e-6)  # the past is untouched
    assert not torch.allclose(a[:, cut:], b[:, cut:], atol=1e-3)  # the changed positions do move


def test_time_and_action_features_switch(sequences):
    batch = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    shuffled = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    shuffled.time_bucket[shuffled.valid] = 5
    shuffled.action[shuffled.valid] = 1
    for use, expect_same in ((True, False), (False, True)):
        model = _model(use_time=use, use_action=use)
        with torch.no_grad():
            same = torch.allclose(model(batch), model(shuffled), atol=1e-6)
        assert same is expect_same


def test_the_gap_to_the_event_before_counts_only_with_the_time_features(sequences):
    batch = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    regapped = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    regapped.gap_bucket[regapped.valid] = 3
    for fields, moves in (
        ({"use_event_gap": True}, True),
        ({}, False),  # off by default
        ({"use_time": False, "use_event_gap": True}, False),
    ):
        model = _model(**fields)
        assert hasattr(model, "gap") is moves  # no table where it is not used: older artifacts load as saved
        with torch.no_grad():
            assert torch.allclose(model(batch), model(regapped), atol=1e-6) is not moves
    legacy = {k: v for k, v in ModelConfig(use_event_gap=True).to_dict().items() if k != "use_event_gap"}
    assert ModelConfig.from_dict(legacy).use_event_gap is False  # saved before the feature existed


def test_the_idle_time_scales_and_shifts_the_vector_only_where_it_is_on(sequences):
    batch = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    later = featurize(sequences.slice(0, 8), ModelConfig(**SMALL))
    assert torch.equal(
        batch.idle_bucket, torch.ones(8, dtype=torch.long)
    )  # as_of just after the newest event
    later.time_bucket[:, -1] = 17  # idle ~1.5 days
    assert torch.equal(later.idle_bucket, torch.full((8,), 17))
    for fields, moves in (
        ({}, True),  # on by default
        ({"use_idle": False}, False),
        ({"use_time": False}, False),
    ):
        model = _model(**fields)
        assert hasattr(model, "idle") is moves  # no table where it is not used: older artifacts load as saved
        with torch.no_grad():
            model.time.weight[17] = model.time.weight[1]  # the newest token's own embedding does not change
            assert torch.allclose(model(batch), model(later), atol=1e-6) is not moves
    idle, plain = _model(), _model(use_idle=False)
    with torch.no_grad():
        idle.idle.weight.zero_()  # scale 0, shift 0: the identity
        plain.load_state_dict({k: v for k, v in idle.state_dict().items() if not k.startswith("idle.")})
        assert torch.allclose(idle(batch), plain(batch), atol=1e-6)
    legacy = {k: v for k, v in ModelConfig(use_idle=True).to_dict().items() if k != "use_idle"}
    assert ModelConfig.from_dict(legacy).use_idle is False  # saved before the feature existed


def test_time_buckets_agree_on_arrays_and_tensors():
    rng = np.random.default_rng(0)
    edges = 1000 * (
        2 ** np.arange(0, 30, dtype=np.int64) - 1
    )  # every bucket edge in ms, and either side of it
    gaps = np.concatenate([edges - 1, edges, edges + 1, rng.integers(-(10**6), 10**12, 5000), [0, -1]])
    want = time_buckets(gaps, 24)
    assert want.min() == 1 and want.max() == 23
    assert np.array_equal(time_buckets(torch.from_numpy(gaps), 24).numpy(), want)
    assert time_buckets(np.array([0, 999, 1000, 2999, 3000, 6999, 7000]), 24).tolist() == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
    ]


def test_plain_config_ignores_attributes(sequences):
    model = _model(use_attributes=False, use_action=False, use_time=False, use_context=False)
    batch = featurize(sequences.slice(0, 8), model.cfg)
    other = featurize(sequences.slice(0, 8), model.cfg)
    other.attrs[..., 1:, :] = 0  # drop category/advertiser/campaign
    other.hour[:] = (other.hour + 5) % 24
    with torch.no_grad():
        assert torch.allclose(model(batch), model(other), atol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        ModelConfig(pooling="mean")


def test_tables_are_named_one_config_each():
    cfg = ModelConfig(**SMALL)
    assert [(t.name, t.feature) for t in cfg.tables] == [
        ("item", "item_id"),
        ("category", "category_id"),
        ("advertiser", "advertiser_id"),
        ("campaign", "campaign_id"),
    ]
    model = UserEncoder(cfg)
    assert list(model.tables) == ["item", "category", "advertiser", "campaign"]
    assert model.tables["item"].num_embeddings == SMALL["item_buckets"]
    assert model.tables["campaign"].num_embeddings == SMALL["attr_buckets"]
    assert "tables.item.weight" in model.state_dict() and "tables.0.weight" not in model.state_dict()
    with pytest.raises(ValueError, match="distinct table names"):
        ModelConfig(attributes=("category_id", "category"))


def test_untied_output_tables_score_items_and_train_sparsely(sequences):
    tied, untied = _model(), _model(tie_items=False)
    assert tied.output_tables is None and list(untied.output_tables) == list(untied.tables)
    batch = featurize(sequences.slice(0, 8), untied.cfg)
    idx = batch.attrs[:, -1]  # (8, A, H) the newest items
    untied.load_state_dict(tied.state_dict(), strict=False)  # the same token side ...
    with torch.no_grad():
        for name, table in untied.output_tables.items():  # ... and an output side of its own
            table.weight.copy_(-tied.tables[name].weight)
        assert torch.allclose(tied(batch), untied(batch), atol=1e-6)  # user vectors: token side only
        assert torch.allclose(untied.item_vectors(idx), -tied.item_vectors(idx), atol=1e-6)
    sparse = untied.param_groups(0.1)[2]
    assert {f"output_tables.{t.name}.weight" for t in untied.cfg.tables} <= set(sparse["names"])
    assert ModelConfig().tie_items and ModelConfig.from_dict(ModelConfig().to_dict()).tie_items


def test_item_dropout_drops_whole_items_in_training_only(sequences):
    model = _model(item_dropout=0.5, use_action=False, use_time=False)
    batch = featurize(sequences.slice(0, 8), model.cfg)
    with torch.no_grad():
        positions_only = (
            model.token_embedding(batch) - model.attribute_embedding(batch.attrs) * batch.valid[..., None]
        )  # (B, T, D) what is left of a token without its item
        assert torch.equal(model.token_embedding(batch), model.token_embedding(batch))  # eval: nothing drops
        model.train()
        torch.manual_seed(1)
        x = model.token_embedding(batch)
    dropped = torch.isclose(x, positions_only, atol=1e-6).all(dim=-1) & batch.valid  # (B, T)
    kept = torch.isclose(x, model.eval().token_embedding(batch), atol=1e-6).all(dim=-1) & batch.valid
    assert torch.equal(dropped | kept, batch.valid)  # every real token is either whole or lost its item
    share = dropped.sum() / batch.valid.sum()
    assert 0.4 < share < 0.6


def test_weights_saved_with_positional_table_keys_still_load(sequences):
    model = _model()
    old = {
        k.replace("tables.item.", "tables.0.")
        .replace("tables.category.", "tables.1.")
        .replace("tables.advertiser.", "tables.2.")
        .replace("tables.campaign.", "tables.3."): v
        for k, v in model.state_dict().items()
    }
    assert "tables.0.weight" in old and "tables.item.weight" not in old  # the layout of older artifacts
    fresh = UserEncoder(model.cfg).eval()
    fresh.load_state_dict(old)  # strict: every key must find its place
    batch = featurize(sequences.slice(0, 8), model.cfg)
    with torch.no_grad():
        assert torch.equal(fresh(batch), model(batch))


def test_weight_decay_groups_by_module_type():
    model = _model(pooling="attention")
    decay, no_decay, sparse = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and sparse["weight_decay"] == 0.0
    assert sparse["sparse"] and set(sparse["names"]) == {f"tables.{t.name}.weight" for t in model.cfg.tables}
    modules = dict(model.named_modules())
    for name in decay["names"]:
        assert name.endswith(".weight") and isinstance(modules[name.rsplit(".", 1)[0]], nn.Linear), name
    for name in no_decay["names"]:
        owner = modules[name.rsplit(".", 1)[0]]
        assert name.endswith(".bias") or isinstance(owner, (nn.Embedding, nn.LayerNorm)), name
    assert "head.weight" in decay["names"] and "pool_query.weight" in decay["names"]
    assert {"pos.weight", "ln_f.weight", "head.bias", "blocks.0.attn.qkv.bias"} <= set(no_decay["names"])
    every = {n for n, _ in model.named_parameters()}
    groups = [set(g["names"]) for g in (decay, no_decay, sparse)]
    assert set.union(*groups) == every and sum(map(len, groups)) == len(every)  # each in exactly one group
    opt = model.configure_optimizer(1e-3, 0.1)
    assert [g["weight_decay"] for g in opt.dense.param_groups] == [0.1, 0.0]
    assert isinstance(opt.sparse, torch.optim.SparseAdam)
    model.extra = nn.Conv1d(2, 2, 1)  # an unclassified module type must be classified, not guessed
    with pytest.raises(TypeError, match="classify"):
        model.param_groups(0.1)


def test_positions_count_back_from_the_newest_and_old_artifacts_keep_their_layout(sequences):
    assert ModelConfig().positions == "from_newest"
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k != "positions"}
    assert ModelConfig.from_dict(legacy).positions == "from_oldest"  # saved before the switch existed
    assert ModelConfig.from_dict(ModelConfig().to_dict()).positions == "from_newest"
    with pytest.raises(ValueError, match="positions must be one of"):
        ModelConfig(positions="middle")
    # the newest event always sits on position embedding 0, whatever the history's length
    for positions, newest_rows in (("from_newest", {0}), ("from_oldest", {1, 4})):
        model = _model(positions=positions, use_action=False, use_time=False, use_attributes=False)
        with torch.no_grad():
            model.tables["item"].weight.zero_()
            model.pos.weight.copy_(torch.arange(model.cfg.max_len, dtype=torch.float32)[:, None])
        got = set()
        for n in (2, 5):
            batch = featurize(truncate(sequences.slice(0, 1), np.array([n])), model.cfg)
            got.add(int(model.token_embedding(batch)[0, -1, 0]))
        assert got == newest_rows, positions


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_training_query_sits_where_the_inference_query_sits(sequences, pooling):
    """A training row's last query with a target (``newest``) is encoded exactly as inference encodes
    the history that ends there: same positions, same vector. Without ``newest`` it is not (it would
    sit one position further back than any inference query)."""
    model = _model(pooling=pooling, use_time=False, use_context=False, max_len=1024)  # no row is cut
    rows = sequences.slice(0, 6)
    n = np.array([len(x) for x in rows["item_id"].to_pylist()])
    cut = np.maximum(n - np.array([1, 2, 3, 1, 4, 2]), 1)  # each row's last query, as a prefix length
    full = featurize(rows, model.cfg)
    T = full.action.shape[1]
    assert n.max() == T < model.cfg.max_len
    newest = torch.as_tensor(T - n + cut - 1)  # (B,) slot of each row's last query
    with torch.no_grad():
        training = model.encode_positions(full, newest=newest)[torch.arange(6), newest]  # (B, D)
        inference = model(featurize(truncate(rows, cut), model.cfg))  # (B, D)
        unanchored = model.encode_positions(full)[torch.arange(6), newest]
    assert torch.allclose(training, inference, atol=1e-5)
    assert not torch.allclose(unanchored, inference, atol=1e-3)
