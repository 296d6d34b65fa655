"""The model lifecycle, train -> publish -> backfill -> current, and the artifact's own honesty:

* `soe train --promote` takes a model to current in one command (real Redis, real local Spark for the
  state snapshot); without a state it says in one line how to make one; without --promote it says
  what comes next;
* training logs one progress line per epoch, stops within its time budget plus one batch, and keeps
  its per-epoch history in the artifact (which the run report reads);
* the model card states the verdict against every baseline, the limitations and the lineage, and is
  regenerated when the metrics change; `soe models list` shows the headline and the verdict;
* `soe models delete` refuses the current and the previous model and removes the others atomically.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from typer.testing import CliRunner

from core.datasets.synthetic import SyntheticConfig, generate, write_log
from encoder.artifact import list_models, load_model, update_metrics
from encoder.config import ModelConfig
from encoder.data import events_to_sequences, item_catalogue, leave_last_out
from encoder.optim import budget_epochs
from encoder.settings import TrainSettings
from encoder.train import fit, train_model

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


def _train_settings(**kw) -> TrainSettings:
    base = {
        "epochs": 2,
        "batch_size": 32,
        "model": TINY,
        "positive_event_types": POS,
        "eval_users": 100,
        "threads": 1,
    }
    return TrainSettings.model_validate({**base, **kw})


def test_history_progress_lines_card_and_list(settings, log, caplog):
    from soe.report.data import artifact

    ts = _train_settings()
    with caplog.at_level(logging.INFO, logger="soe.train"):
        version = train_model(
            settings.layout(),
            ts,
            settings.events,
            log.events,
            max_len=30,
            show_progress=False,
            source_name="synthetic test log",
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "soe.train" and r.levelno == logging.INFO]
    lines = [line for line in lines if line.startswith("epoch ")]
    assert len(lines) == 2, lines  # one per epoch
    line = r"epoch 1/2: loss \d+\.\d+, valid NDCG@10 \d\.\d+ \(best \d\.\d+\), \d+\.\d s, ETA \d+\.\d s$"
    assert re.match(line, lines[0]), lines[0]
    assert lines[1].startswith("epoch 2/2") and lines[1].endswith("ETA 0.0 s")

    _, _, meta = load_model(settings.layout(), version)
    history = meta["metrics"]["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    for h in history:
        assert {"loss", "valid_ndcg10", "valid_hr10", "lr", "seconds"} <= set(h) and h["seconds"] > 0
    assert history[0]["lr"] > 0
    assert [h["epoch"] for h in artifact(settings.layout(), version)["history"]] == [0, 1]  # the run report

    card = (settings.layout().model(version) / "MODEL_CARD.md").read_text()
    m = meta["metrics"]
    for name in ("popularity", "bag-of-items"):  # a row and a verdict per baseline
        row = rf"^\| {name} \| \d\.\d{{4}} \| .* \| (beats|LOSES to) {name} by [+-]\d"
        assert re.search(row, card, re.M), card
    for needle in (
        "**Verdict**",
        "## Limitations",
        "leave-last-out",
        "Data window",
        "## Lineage",
        "data: synthetic test log",
        "config hash: ",
        "## Training history",
    ):
        assert needle in card, needle
    assert re.search(r"git commit [0-9a-f]{40}", card), card  # the tests run in a git checkout
    assert meta["lineage"]["config_hash"] in card

    [listed] = list_models(settings.layout())
    assert listed["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-5)
    assert listed["best_baseline"] in ("popularity", "bag-of-items") and "best_baseline_ndcg@10" in listed
    assert "metrics" not in listed and not any(k.startswith("bag_") for k in listed)

    # a model that loses to a baseline says so, in the card (regenerated with the metrics) and the list
    update_metrics(settings.layout(), version, {"pop_ndcg@10": m["ndcg@10"] + 0.25, "pop_hr@10": 0.9})
    card = (settings.layout().model(version) / "MODEL_CARD.md").read_text()
    assert "**Verdict**: LOSES to popularity by -0.2500 NDCG@10" in card
    [listed] = list_models(settings.layout())
    assert listed["verdict"].startswith("LOSES to popularity") and listed["beats_baselines"] is False
    assert listed["best_baseline"] == "popularity"


def test_time_budget_is_checked_between_batches(log, monkeypatch):
    """A fake clock (50 ms per reading) makes it deterministic on any load: the budget runs out inside
    the first epoch and training stops at the next batch boundary, not at the end of the epoch."""
    import itertools

    import encoder.train

    tick = 0.05
    readings = itertools.count(0.0, tick)
    monkeypatch.setattr(encoder.train.time, "perf_counter", lambda: next(readings))
    budget = 1.0
    ts = _train_settings(epochs=5, batch_size=2, time_budget_s=budget, eval_users=50, patience=10)
    seq = events_to_sequences(log.events)
    split, cat = leave_last_out(seq, POS), item_catalogue(seq)
    result = fit(ModelConfig(**TINY), ts, split, cat, POS, None, show_progress=False)
    [epoch] = result.history  # the budget ran out inside the first epoch, not after it
    assert epoch["stopped"] == "time_budget" and result.epochs_run == 1
    full_epoch_steps = -(-split.train.num_rows // 2)  # at least: long histories add rows
    assert 1 <= result.steps < full_epoch_steps / 2, (result.steps, full_epoch_steps)
    assert result.steps <= budget / tick + 1  # every batch reads the clock at least once: checked each batch
    assert result.best_valid_ndcg10 >= 0  # the cut epoch was still validated: its weights are kept


def test_budget_epochs_fits_the_schedule_to_the_pace_so_far():
    assert budget_epochs(30, 0.0, 100.0, 3) == 30  # no budget: the configured schedule
    assert budget_epochs(30, 840.0, 18.0, 1) == 30  # a fast machine: 46 would fit, 30 are configured
    assert budget_epochs(30, 840.0, 41.0, 1) == 20  # a slower one: the schedule shrinks to what fits
    assert budget_epochs(30, 840.0, 410.0, 10) == 20  # re-planned at the mean pace of every epoch so far
    assert budget_epochs(30, 840.0, 900.0, 12) == 12  # already over: never fewer than the epochs done


def test_a_time_budget_too_short_for_the_epochs_still_completes_its_schedule(log, monkeypatch):
    """With a fake clock (10 ms per reading) a 10-epoch schedule does not fit the budget: training
    re-plans the cosine to the epochs that fit, runs them whole and ends with the rate decayed, instead
    of being cut mid-epoch at a high rate."""
    import itertools

    import encoder.train

    readings = itertools.count(0.0, 0.01)
    monkeypatch.setattr(encoder.train.time, "perf_counter", lambda: next(readings))
    seq = events_to_sequences(log.events)
    split, cat = leave_last_out(seq, POS), item_catalogue(seq)
    lr = 1e-3
    probe = _train_settings(epochs=1, lr=lr, time_budget_s=1e9)  # a budget reads the clock every batch
    epoch_s = fit(ModelConfig(**TINY), probe, split, cat, POS, None, show_progress=False).train_s
    ts = _train_settings(epochs=10, patience=10, lr=lr, time_budget_s=3.5 * epoch_s)
    result = fit(ModelConfig(**TINY), ts, split, cat, POS, None, show_progress=False)
    assert 2 <= result.epochs_run < 10, [h["planned_epochs"] for h in result.history]
    assert not any("stopped" in h for h in result.history)  # ended by the plan, not cut by the budget
    assert result.history[-1]["planned_epochs"] == result.epochs_run
    assert result.history[-1]["lr"] < 0.1 * lr  # the cosine reached its end (cut at 3 of 10: ~0.8 lr)
    assert result.train_s <= ts.time_budget_s


def _cli_env(monkeypatch, settings, **extra) -> None:
    env = {
        "SOE_DATA__ROOT": str(settings.data.root),
        "SOE_TRAIN__EPOCHS": "1",
        "SOE_TRAIN__THREADS": "1",
        "SOE_TRAIN__MODEL": json.dumps({**TINY, "max_len": 50}),
        "SOE_TRAIN__BATCH_SIZE": "32",
        "SOE_TRAIN__EVAL_USERS": "100",
        **extra,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_train_says_what_comes_next_and_promote_needs_a_state(settings, log, monkeypatch):
    from soe.cli.app import app

    write_log(log, settings.layout())
    _cli_env(monkeypatch, settings, SOE_REDIS__MODE="memory", SOE_REDIS__NAMESPACE="lifecycle-next")
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--events", "--promote"])
    assert out.exit_code == 2, out.output
    [line] = out.stderr.strip().splitlines()  # one line: what is missing and how to make it
    assert "needs a sequence state snapshot" in line and "soe sequences --interval START/END" in line
    assert list_models(settings.layout()) == []  # checked before training, not after

    out = runner.invoke(app, ["train", "--events"])
    assert out.exit_code == 0, out.output
    version = json.loads(out.stdout.strip().splitlines()[-1])["version"]
    assert f"next: `soe backfill --model {version}`" in out.stderr.strip().splitlines()[-1]
    assert version in out.stderr and ("beats" in out.stderr or "LOSES" in out.stderr)  # the verdict


def test_delete_refuses_current_and_previous(settings, log, monkeypatch):
    from soe.cli.app import app
    from store.backends import open_store
    from store.backends.memory import MemoryVectorStore
    from store.settings import RedisSettings

    ns = "lifecycle-delete"
    versions = [
        train_model(
            settings.layout(),
            _train_settings(epochs=e),
            settings.events,
            log.events,
            max_len=30,
            show_progress=False,
        )
        for e in (1, 2, 3)
    ]
    store = open_store(RedisSettings(mode="memory", namespace=ns))
    store.switch_pointer(versions[0])
    store.switch_pointer(versions[1])  # current = v1, previous = v0
    _cli_env(monkeypatch, settings, SOE_REDIS__MODE="memory", SOE_REDIS__NAMESPACE=ns)
    runner = CliRunner()
    try:
        listed = {m["version"]: m for m in json.loads(runner.invoke(app, ["models", "list"]).stdout)}
        assert listed[versions[1]]["current"] and listed[versions[0]]["previous"]
        assert not listed[versions[2]]["current"] and not listed[versions[2]]["previous"]
        for v, role in ((versions[1], "current"), (versions[0], "previous")):
            out = runner.invoke(app, ["models", "delete", v])
            assert out.exit_code == 2 and f"is the store's {role} model: refusing" in out.stderr, out.output
            assert settings.layout().model(v).is_dir()
        out = runner.invoke(app, ["models", "delete", versions[2]])
        assert out.exit_code == 0, out.output
        removed = json.loads(out.stdout)
        assert removed["deleted"] == versions[2] and removed["files"] >= 6
        assert f"deleted {versions[2]}" in out.stderr
        assert not settings.layout().model(versions[2]).exists()
        assert not [p for p in settings.layout().models.iterdir() if p.name.startswith(".")]  # nothing aside
        assert {m["version"] for m in list_models(settings.layout())} == set(versions[:2])
        for bad, why in (("v-000000000000", "is not under"), ("../x", "not a model version")):
            out = runner.invoke(app, ["models", "delete", bad])
            assert out.exit_code == 2 and why in out.stderr, out.output
    finally:
        MemoryVectorStore.discard(ns)


def test_delete_without_a_readable_store_needs_force(settings, log, monkeypatch):
    from soe.cli.app import app

    version = train_model(
        settings.layout(),
        _train_settings(epochs=1),
        settings.events,
        log.events,
        max_len=30,
        show_progress=False,
    )
    _cli_env(
        monkeypatch, settings, SOE_REDIS__MODE="single", SOE_REDIS__HOST="127.0.0.1", SOE_REDIS__PORT="1"
    )
    runner = CliRunner()
    out = runner.invoke(app, ["models", "list"])
    assert out.exit_code == 0 and "cannot read the store's current-model pointer" in out.stderr
    assert json.loads(out.stdout)[0]["current"] is None
    out = runner.invoke(app, ["models", "delete", version])
    assert (
        out.exit_code == 2
        and "--force deletes anyway" in out.stderr
        and settings.layout().model(version).is_dir()
    )
    out = runner.invoke(app, ["models", "delete", version, "--force"])
    assert out.exit_code == 0 and not settings.layout().model(version).exists()


@pytest.mark.slow  # a JVM start and a Spark step: 20-30 s idle, 150-210 s measured on a loaded 2-core machine
def test_train_promote_end_to_end(tmp_path, redis_single, monkeypatch):
    """Real Redis, real local Spark: a state snapshot, then `soe train --promote` -> current, all users."""
    from core.layout import HOUR, utc
    from soe.cli.app import app
    from soe.config import load_settings
    from soe.flows import hourly, stages

    start, boot = utc("2026-01-01T00:00Z"), 3
    t0 = start + HOUR * boot
    creds = {
        "SOE_REDIS__USERNAME": redis_single.username or "",
        "SOE_REDIS__PASSWORD": redis_single.password.get_secret_value() if redis_single.password else "",
    }
    env = {
        "SOE_DATA__ROOT": str(tmp_path / "data"),
        "SOE_REDIS__MODE": "single",
        "SOE_REDIS__HOST": redis_single.host,
        "SOE_REDIS__PORT": str(redis_single.port),
        "SOE_REDIS__BUCKETS": "32",
        **{k: v for k, v in creds.items() if v},
        "SOE_SEQUENCES__NUM_SHARDS": "2",
        "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": str(boot + 1),
        "SOE_SPARK__MASTER": "local[2]",
        "SOE_SPARK__SHUFFLE_PARTITIONS": "2",
        "SOE_SPARK__DRIVER_MEMORY": "1g",
    }
    s = load_settings(environ=env)
    write_log(
        generate(
            SyntheticConfig(
                n_users=200,
                n_items=500,
                n_clusters=4,
                hours=boot,
                start=str(start),
                base_events_per_user=30,
                seed=3,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, t0 - HOUR, t0)  # the state snapshot the backfill re-encodes

    _cli_env(monkeypatch, s, **env)
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--events", "--promote"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    version = result["version"]
    known = stages.state_user_ids(s, t0)
    assert stages.current_model(s) == version and result["backfill"]["previous"] is None
    assert result["backfill"]["users"] == len(known) and stages.vectors_found(s, version, known) == len(known)
    assert f"{version} is now current" in out.stderr.strip().splitlines()[-1]

    [listed] = json.loads(runner.invoke(app, ["models", "list"]).stdout)
    assert listed["version"] == version and listed["current"] is True and listed["previous"] is False
    out = runner.invoke(app, ["models", "delete", version])
    assert out.exit_code == 2 and "current model: refusing" in out.stderr
    assert s.layout().model(version).is_dir()
