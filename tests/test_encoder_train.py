"""Training end to end on small real data: resume after a crash (and refusing a planted checkpoint),
artifacts, metrics, CLI, typed configuration. (The promotion gate, soe.flows.gate, is tested in
tests/test_flows_logic.py.)"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from core.datasets.synthetic import SyntheticConfig, generate
from encoder.artifact import list_models, load_model, model_version
from encoder.config import ModelConfig
from encoder.data import chunk_rows, events_to_sequences, item_catalogue, leave_last_out
from encoder.evaluate import evaluate_model, served_hourly
from encoder.features import featurize, hour_of_day, time_buckets, weekday_of
from encoder.metrics import purity, random_purity, ranking_metrics
from encoder.model import UserEncoder
from encoder.objectives import next_positive_targets
from encoder.settings import TrainSettings
from encoder.sources import load_source
from encoder.train import (
    CheckpointError,
    encode_in_length_buckets,
    fit,
    idle_before_next,
    last_query_slot,
    length_batches,
    loss_inputs,
    query_counts,
    result_settings,
    train_model,
)

torch.set_num_threads(1)  # shared test machine
TINY = {
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "max_len": 30,
    "item_buckets": 2**10,
    "attr_buckets": 2**8,
}
POS = ["click", "conversion", "view"]


@pytest.fixture(scope="module")
def log():
    return generate(
        SyntheticConfig(n_users=150, n_items=300, n_clusters=3, hours=12, base_events_per_user=40)
    )


def _settings(settings, **train):
    train = {
        "epochs": 2,
        "batch_size": 32,
        "model": TINY,
        "positive_event_types": POS,
        "eval_users": 100,
        "threads": 1,
        **train,
    }
    return settings.model_copy(update={"train": TrainSettings.model_validate(train)})


def _train(s, source, **kw):
    return train_model(
        s.layout(), s.train, s.events, source, max_len=s.sequences.max_len, show_progress=False, **kw
    )


class Crash(RuntimeError):
    pass


def test_checkpoint_resume_gives_the_same_model(settings, log, tmp_path):
    s = _settings(settings, epochs=3, patience=10)
    seq = events_to_sequences(log.events)
    split = leave_last_out(seq, POS)
    cat = item_catalogue(seq)
    cfg = ModelConfig(**TINY)
    straight = fit(cfg, s.train, split, cat, POS, tmp_path / "a" / "ckpt.pt", show_progress=False)

    def crash(epoch, _):
        if epoch == 1:
            raise Crash()

    with pytest.raises(Crash):
        fit(
            cfg, s.train, split, cat, POS, tmp_path / "b" / "ckpt.pt", show_progress=False, on_epoch_end=crash
        )
    resumed = fit(cfg, s.train, split, cat, POS, tmp_path / "b" / "ckpt.pt", show_progress=False)
    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch == -1
    assert resumed.steps == straight.steps
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_prefetching_batches_in_a_worker_thread_trains_the_same_model(settings, log):
    s = _settings(settings, epochs=2, patience=10, time_budget_s=0.0)
    seq = events_to_sequences(log.events)
    split, cat, cfg = leave_last_out(seq, POS), item_catalogue(seq), ModelConfig(**TINY)
    assert not s.train.prefetch_for("cpu") and s.train.prefetch_for("cuda")  # default: on a GPU only
    inline = fit(cfg, s.train, split, cat, POS, show_progress=False)
    ahead = fit(cfg, s.train.model_copy(update={"prefetch": True}), split, cat, POS, show_progress=False)
    assert [h["loss"] for h in ahead.history] == [h["loss"] for h in inline.history]
    for (name, a), b in zip(inline.model.state_dict().items(), ahead.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_model_publishes_an_evaluated_artifact(settings, log):
    s = _settings(settings)
    version = _train(s, log.events)
    assert version == _train(s, log.events)  # same config + window -> same version
    _model, cfg, meta = load_model(s.layout(), version)
    m = meta["metrics"]
    for key in ("ndcg@10", "hr@50", "pop_ndcg@10", "bag_ndcg@10", "train_s", "best_valid_ndcg10"):
        assert key in m
    assert 0.0 <= m["ndcg@10"] <= 1.0 and m["test_users"] > 50
    assert (
        0.0 <= m["served_ndcg@10"] <= 1.0 and 0 < m["served_users"] <= m["test_users"]
    )  # a clock: served too
    path = s.layout().model(version)
    for name in ("config.json", "hashing.json", "weights.pt", "metrics.json", "MODEL_CARD.md", "_SUCCESS"):
        assert (path / name).is_file(), name
    assert json.loads((path / "hashing.json").read_text())["n_hashes"] == cfg.n_hashes
    assert "Training window" in (path / "MODEL_CARD.md").read_text()
    assert [x["version"] for x in list_models(s.layout())] == [version]
    seq = events_to_sequences(log.events)
    full = evaluate_model(s.layout(), s.train, s.events, version, seq, truth=log.users, save=True)
    assert full["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-6)  # same split, same code
    assert 0 <= full["purity20"] <= 1 and full["random_purity20"] < 0.6
    assert "staleness_loss_pct" in full and full["staleness_targets"] > 0
    assert "purity20" in load_model(s.layout(), version)[2]["metrics"]
    with pytest.raises(FileNotFoundError, match="not published"):
        load_model(s.layout(), "v-doesnotexist")


def test_version_id_depends_on_config_and_window():
    a = model_version(ModelConfig(**TINY), {"start": "x"})
    assert a == model_version(ModelConfig(**TINY), {"start": "x"})
    assert a != model_version(ModelConfig(**{**TINY, "d_model": 32}), {"start": "x"})
    assert a != model_version(ModelConfig(**TINY), {"start": "y"})


def test_ranking_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    relevant = (np.array([0, 1, 3]), np.array([2, 0, 1]))  # user 0: item 2; user 1: items 0, 1
    exclude = (np.array([0, 1, 1]), np.array([0]))  # user 0 saw item 0
    m = ranking_metrics(lambda lo, hi: scores[lo:hi], relevant, exclude, 4, ks=(1, 2))
    # user 0: item 0 excluded -> ranking 1, 2, 3: target at rank 2
    # user 1: ranking 3, 2, 1, 0: targets at 3, 4
    assert m["hr@1"] == 0.0 and m["hr@2"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert m["ndcg@2"] == pytest.approx(0.5 * (1 / np.log2(3)) + 0.0)
    labels = np.array([0, 0, 1, 1])
    vecs = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]), dim=-1)
    assert purity(vecs, labels, k=1) == 1.0
    assert 0.2 < random_purity(np.repeat(np.arange(3), 200), k=20) < 0.46


def test_served_hourly_gives_each_target_the_vector_of_the_hour_before_it():
    """Minutes after 10:00 of one day: a target at 11:30 is served by the 11:00 vector, made from the events
    before 11:00 (not the one at 11:00 itself, nor the 11:10 one); a user with nothing before the boundary
    is left out."""
    H, M = 3_600_000, 60_000
    day = int(np.datetime64("2026-01-01T10:00", "ms").astype(np.int64))
    rows = [  # user, minutes after 10:00, event type, item
        *[(1, m, "view", i) for m, i in ((5, 11), (20, 12), (60, 13), (70, 14))],
        (1, 90, "click", 15),  # user 1: valid target 14 at 11:10 (a view), test target 15 at 11:30
        *[(2, m, "click", i) for m, i in ((130, 21), (140, 22), (150, 23))],  # user 2: all within 12:00-13:00
    ]
    events = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([day + r[1] * M for r in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "event_type": [r[2] for r in rows],
            "item_id": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
    split = leave_last_out(events_to_sequences(events), ["click", "view"], min_positives=3)
    assert split.test_target.tolist() == [15, 23]
    assert split.test_target_ts.tolist() == [day + 90 * M, day + 150 * M]
    inputs, targets, as_of = served_hourly(split)
    assert targets.tolist() == [15] and as_of.tolist() == [day + H]
    assert inputs["user_id"].to_pylist() == [1] and inputs["item_id"].to_pylist() == [[11, 12]]
    assert served_hourly(split, every_ms=2 * M)[1].tolist() == [15, 23]  # every 2 minutes: both served


def test_cli_train_eval_list_on_a_sasrec_file(settings, tmp_path, monkeypatch):
    from soe.cli.app import app

    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *rng.integers(1, 40, 12)])) for u in range(1, 60)]
    path = tmp_path / "seq.txt"
    path.write_text("\n".join(lines) + "\n")
    env = {
        "SOE_DATA__ROOT": str(settings.data.root),
        "SOE_TRAIN__EPOCHS": "1",
        "SOE_TRAIN__THREADS": "1",
        "SOE_TRAIN__MODEL": json.dumps(TINY),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--sasrec-file", str(path)])
    assert out.exit_code == 0, out.output
    trained = json.loads(out.stdout.strip().splitlines()[-1])
    _, cfg, _ = load_model(settings.layout(), trained["version"])
    assert not cfg.use_time and not cfg.use_action  # no timestamps / event types in the file
    out = runner.invoke(app, ["eval", "--sasrec-file", str(path)])
    assert out.exit_code == 0, out.output
    evaluated = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        evaluated["version"] == trained["version"]
        and "ndcg@10" in evaluated
        and "staleness_loss_pct" not in evaluated
    )
    listed = json.loads(runner.invoke(app, ["models", "list"]).stdout)
    assert listed[0]["version"] == trained["version"]
    bad = runner.invoke(app, ["train", "--sasrec-file", str(tmp_path / "missing.txt")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    none = runner.invoke(app, ["train"])
    assert none.exit_code == 2 and "exactly one data source" in none.output


def test_sources_read_the_validated_event_log(settings, log):
    from core.datasets.synthetic import write_log

    write_log(log, settings.layout())
    name, seq = load_source(settings.layout(), settings.events, events=True)
    assert name == "events:all" and seq.num_rows == len(set(log.events["user_id"].to_pylist()))
    assert sum(seq["n_events"].to_pylist()) == log.events.num_rows
    _, window = load_source(
        settings.layout(), settings.events, events=True, interval="2026-01-01T00:00Z/2026-01-01T03:00Z"
    )
    latest = max(max(ts) for ts in window["ts"].to_pylist())
    assert latest.hour < 3 and sum(window["n_events"].to_pylist()) < log.events.num_rows
    with pytest.raises(ValueError, match="exactly one"):
        load_source(settings.layout(), settings.events, events=True, ml100k=True)


class _Planted:
    """Unpickling this calls ``Path.touch(marker)``: any code could run in its place."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_planted_pickle_checkpoint_is_refused_not_executed(settings, log, tmp_path):
    s = _settings(settings, epochs=1)
    seq = events_to_sequences(log.events)
    split, cat = leave_last_out(seq, POS), item_catalogue(seq)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"model": {}, "state": _Planted(marker)}, ckpt)
    torch.load(ckpt, weights_only=False)  # the payload is live: a full unpickle runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        fit(ModelConfig(**TINY), s.train, split, cat, POS, ckpt, show_progress=False)
    assert not marker.exists()  # ... resume refused it without running it


def test_model_config_is_typed_and_checked_when_loaded(settings):
    from soe.config import load_settings

    ok = load_settings(environ={"SOE_TRAIN__MODEL": json.dumps({"d_model": 16, "pooling": "attention"})})
    assert ok.train.model.d_model == 16 and ok.train.model_overrides() == {
        "d_model": 16,
        "pooling": "attention",
    }
    bad = {
        "SOE_TRAIN__MODEL": json.dumps({"d_modle": 16}),  # a typo
        "SOE_TRAIN__MODEL__N_LAYERS": "two",  # a wrong type
        "SOE_TRAIN__MODEL__POOLING": "mean",  # not a choice
        "SOE_TRAIN__OBJECTIVES": json.dumps({"next_postive": 1.0}),
        "SOE_TRAIN__DEVICE": "gpu",
        "SOE_INFERENCE__GPU_DTYPE": "bf17",
        "SOE_INFERENCE__PATH": "fastest",
        "SOE_INFERENCE__STATE_SPLIT": "users",
    }
    where = {
        "SOE_TRAIN__MODEL": "train.model.d_modle",
        "SOE_TRAIN__MODEL__N_LAYERS": "train.model.n_layers",
        "SOE_TRAIN__MODEL__POOLING": "train.model.pooling",
        "SOE_TRAIN__OBJECTIVES": "train.objectives.next_postive",
        "SOE_TRAIN__DEVICE": "train.device",
        "SOE_INFERENCE__GPU_DTYPE": "inference.gpu_dtype",
        "SOE_INFERENCE__PATH": "inference.path",
        "SOE_INFERENCE__STATE_SPLIT": "inference.state_split",
    }
    for name, value in bad.items():
        with pytest.raises(ValueError) as err:  # pydantic's ValidationError (or the config's wrapper of it)
            load_settings(environ={name: value})
        assert where[name] in str(err.value), (name, str(err.value))
    with pytest.raises(ValueError, match="at least one objective"):
        TrainSettings(objectives={})
    with pytest.raises(ValueError, match="needs negatives >= 1"):
        TrainSettings(in_batch_negatives=False, negatives=0)


def test_version_ids_ignore_unset_and_runtime_train_settings():
    plain = result_settings(TrainSettings())
    assert plain["model"] == {} and "device" not in plain and "strict_device" not in plain
    assert result_settings(TrainSettings(model={"d_model": 32}))["model"] == {"d_model": 32}
    assert (
        result_settings(TrainSettings(device="cuda:1", threads=3, strict_device=True, prefetch=True)) == plain
    )


@pytest.mark.parametrize("group_batches", [1, 4, 16])
def test_length_batches_cover_every_user_once_and_group_by_length(group_batches):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, 4000)  # (U,)
    batches = length_batches(lengths, 32, np.random.default_rng(1), group_batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # each user once
    assert all(len(b) <= 32 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])  # mean length range within a batch
    if group_batches == 1:  # random batches: nearly the whole 1-50 range in each
        assert spread > 40
    else:  # sorted groups: far less padding, less the more batches a group holds
        assert spread < 60 / group_batches


def test_length_group_batches_must_be_positive():
    with pytest.raises(ValueError, match="length_group_batches"):
        TrainSettings(length_group_batches=0)


def test_query_counts_are_the_rows_next_positive_targets(log):
    """equal_target_weight's per-step mean comes from query_counts: it must count exactly the queries
    that next_positive_targets gives a target, row by row (a mix of positive and other event types)."""
    cfg = ModelConfig(**TINY)
    seq = events_to_sequences(log.events)
    train = chunk_rows(seq, cfg.max_len)
    batch = featurize(train, cfg)
    inputs = loss_inputs(cfg, TrainSettings(), train, item_catalogue(seq), POS, "cpu")
    positive = torch.isin(batch.action, inputs.positive_idx) & batch.valid
    expected = ((next_positive_targets(positive) >= 0) & batch.valid).sum(1).numpy()
    assert expected.sum() > 0 and (expected < batch.lengths.numpy() - 1).any()  # rows ending in other types
    assert query_counts(train, POS).tolist() == expected.tolist()
    assert query_counts(train.slice(7), POS).tolist() == expected[7:].tolist()  # a slice's offsets start > 0


def test_equal_target_weight_only_reweighs_the_steps(settings, log):
    """One step per epoch: its targets are the mean, the scale is 1 and training is unchanged. Several
    steps of different sizes: the steps are reweighed, so training changes."""
    seq = events_to_sequences(log.events)
    split, cat, cfg = leave_last_out(seq, POS), item_catalogue(seq), ModelConfig(**TINY)

    def losses(**train):
        ts = _settings(settings, patience=10, **train).train
        return [h["loss"] for h in fit(cfg, ts, split, cat, POS, show_progress=False).history]

    whole = losses(batch_size=100_000)
    assert losses(batch_size=100_000, equal_target_weight=True) == pytest.approx(whole, rel=1e-4)
    assert losses(batch_size=16, equal_target_weight=True) != pytest.approx(losses(batch_size=16), rel=1e-3)


def test_each_training_query_is_idle_a_random_part_of_the_wait_for_its_next_event(log):
    """A query's idle time is drawn between its event and the next one, never past it, and spread over
    that wait; the newest slot (no next event) keeps the row's own idle time."""
    cfg = ModelConfig(**TINY, use_idle=True)
    batch = featurize(chunk_rows(events_to_sequences(log.events), cfg.max_len).slice(0, 64), cfg)
    pairs = batch.valid[:, 1:] & batch.valid[:, :-1]  # (B, T-1) a real event and the real one after it
    gap = time_buckets((batch.ts[:, 1:] - batch.ts[:, :-1])[pairs].numpy(), cfg.n_time_buckets)
    draws = [idle_before_next(batch, torch.Generator().manual_seed(s), cfg.n_time_buckets) for s in range(8)]
    for idle in draws:
        assert idle.shape == batch.action.shape
        assert torch.equal(idle[:, -1], batch.idle_bucket)
        got = idle[:, :-1][pairs].numpy()
        assert (got >= 1).all() and (got <= gap).all()
    got = np.stack([d[:, :-1][pairs].numpy() for d in draws])  # (8, pairs)
    long = gap >= 8  # waits of two minutes or more: a uniform moment lands in its last bucket < half the time
    assert 0.1 < (got[:, long] == gap[long]).mean() < 0.5
    assert (got[:, long] <= gap[long] - 2).mean() > 0.1
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.parametrize(
    "seed, pooling, use_idle", [(0, "last", False), (1, "last", True), (2, "attention", True)]
)
def test_length_buckets_give_the_one_pass_outputs_and_gradients(log, seed, pooling, use_idle):
    """The bucketed forward pass (each group of rows trimmed to its longest) is a fast path of the
    one-pass forward over the whole padded batch: on random batches of mixed lengths every real
    position's vector and every parameter's gradient must match."""
    cfg = ModelConfig(**TINY, pooling=pooling, use_idle=use_idle)
    seq = events_to_sequences(log.events)
    train = chunk_rows(seq, cfg.max_len)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(train.num_rows, 24, replace=False))
    batch = featurize(train.take(rows), cfg)
    assert batch.lengths.min() < batch.lengths.max() // 2  # mixed lengths: the buckets trim padding
    inputs = loss_inputs(cfg, TrainSettings(), train, item_catalogue(seq), POS, "cpu")
    positive = torch.isin(batch.action, inputs.positive_idx) & batch.valid
    newest = last_query_slot(next_positive_targets(positive))
    hour, weekday = hour_of_day(batch.ts), weekday_of(batch.ts)  # as the training step computes them
    idle = idle_before_next(batch, torch.Generator().manual_seed(seed), cfg.n_time_buckets)
    torch.manual_seed(seed)
    model = UserEncoder(cfg).eval()  # no dropout: both paths see the same function
    weights = torch.randn(*batch.action.shape, cfg.d_model)  # (B, T, D) a random loss on real positions

    def run(buckets):
        model.zero_grad()
        out = encode_in_length_buckets(model, batch, hour, weekday, idle, newest, buckets)
        (out * weights * batch.valid[..., None]).sum().backward()
        grads = {n: p.grad.to_dense().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.detach()[batch.valid], grads

    one_out, one_grads = run(1)
    for buckets in (2, 5, 24, 100):
        out, grads = run(buckets)
        assert torch.allclose(out, one_out, atol=1e-5)
        assert grads.keys() == one_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, one_grads[name], atol=1e-4), name


def test_forward_length_buckets_must_be_positive():
    with pytest.raises(ValueError, match="forward_length_buckets"):
        TrainSettings(forward_length_buckets=0)
