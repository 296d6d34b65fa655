"""Prometheus textfiles of the batch runs (soe.flows.metrics) and deploy/monitoring (rules, dashboard).

The .prom files come from run records written by the flows' own functions (tests/batch_runs.py);
the alert rules are unit-tested with `promtool test rules` (Debian package ``prometheus``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.layout import HOUR, stamp
from soe.flows import metrics
from soe.flows.manifest import alert, read_manifest, record_run
from tests.batch_runs import MODEL, T0, write_history

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
RULES = MONITORING / "soe-rules.yml"
RULE_TESTS = MONITORING / "soe-rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "soe-batch.json"
# metrics the rules/dashboard read from other exporters: redis_exporter and node_exporter itself
EXTERNAL = {"redis_memory_used_bytes", "redis_memory_max_bytes", "node_textfile_mtime_seconds"}
# what an operator must see: each of these is used by an alert rule (the dashboard uses every metric)
ALERTED = {
    "soe_generation_newest_timestamp_seconds",
    "soe_generation_rejected",
    "soe_generation_graph_recall",
    "soe_generation_check_threshold",
    "soe_quarantine_ratio",
    "soe_run_success",
    "soe_run_timestamp_seconds",
}


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} of a .prom file."""
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp, name: str, **labels: str) -> float:
    hits = [
        v for (n, ls), v in smp.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    ]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture
def history(settings):
    return write_history(settings)


@pytest.fixture
def prom_dir(settings, history):
    return settings.layout().root / "metrics"


def test_every_flow_writes_its_textfile_with_labels_flow_and_model(prom_dir):
    files = sorted(p.name for p in prom_dir.iterdir())
    assert files == ["soe_backfill.prom", "soe_hourly.prom", "soe_training.prom"]  # no temp files left
    for p in prom_dir.iterdir():
        smp = samples(p)
        assert smp, p
        assert all({"flow", "model"} <= set(dict(ls)) for _, ls in smp)
        assert {dict(ls)["flow"] for _, ls in smp} == {p.stem.removeprefix("soe_")}


def test_a_done_hourly_run_exports_stage_times_counts_checks_and_quarantine(settings, history):
    layout = settings.layout()
    last_done = history.hours[-2]
    # the rejected last hour overwrote soe_hourly.prom; rerunning it (done) writes it again from its manifest
    m = read_manifest(layout, "soe_hourly", last_done)
    path = metrics.export_run(layout, m, layout.root / "again")
    smp = samples(path)
    st = m["stages"]
    assert value(smp, "soe_run_success") == 1
    assert value(smp, "soe_run_as_of_timestamp_seconds") == last_done.timestamp()
    for stage in ("sequences", "encode", "publish", "graph", "validate"):
        assert value(smp, "soe_stage_seconds", stage=stage) == pytest.approx(st[stage]["seconds"])
    seq = st["sequences"]
    assert value(smp, "soe_stage_input_rows", stage="sequences") == seq["valid_events"] + seq["quarantined"]
    assert value(smp, "soe_stage_output_rows", stage="sequences") == seq["active_users"]
    assert value(smp, "soe_vectors_encoded") == st["encode"]["users"] == value(smp, "soe_vectors_written")
    reasons = history.quarantine[last_done]
    assert seq["reasons"] == reasons  # the run manifest keeps the counts per reason (they outlive the marker)
    for reason, n in reasons.items():
        assert value(smp, "soe_quarantine_rows", reason=reason) == n
    total = sum(reasons.values())
    assert value(smp, "soe_quarantine_ratio") == pytest.approx(total / (total + seq["valid_events"]))
    checks = {c["name"]: c for c in st["validate"]["checks"]}
    assert value(smp, "soe_generation_coverage") == checks["coverage"]["value"] == 1.0
    assert value(smp, "soe_generation_drift_cosine") == pytest.approx(checks["drift"]["value"])
    assert 0.5 < checks["drift"]["value"] < 1.0
    assert value(smp, "soe_generation_bad_norm_rows") == 0
    assert value(smp, "soe_generation_graph_recall") == pytest.approx(st["graph"]["recall_at_k"])
    min_recall = settings.orchestration.min_graph_recall
    assert value(smp, "soe_generation_check_threshold", check="recall") == min_recall
    assert value(smp, "soe_generation_validated") == 1 and value(smp, "soe_generation_rejected") == 0
    assert value(smp, "soe_generation_newest_timestamp_seconds") == last_done.timestamp()


def test_a_rejected_hour_marks_the_run_failed_and_keeps_the_newest_validated_generation(prom_dir, history):
    smp = samples(prom_dir / "soe_hourly.prom")
    assert value(smp, "soe_run_success", model=MODEL) == 0
    assert value(smp, "soe_generation_rejected") == 1 and value(smp, "soe_generation_validated") == 0
    assert value(smp, "soe_generation_check_passed", check="recall") == 0
    assert value(smp, "soe_run_as_of_timestamp_seconds") == history.rejected.timestamp()
    assert value(smp, "soe_generation_newest_timestamp_seconds") == history.hours[-2].timestamp()
    assert value(smp, "soe_failed_intervals") == 1


def test_a_failed_task_without_a_rejection_names_the_flows_last_model(settings, history):
    layout = settings.layout()
    t = history.hours[-1] + HOUR
    path = alert(layout, "soe_hourly", t, "encode_hour", "DrillFailure('encoder shard 1 fails')")
    assert path.is_file()
    smp = samples(layout.root / "metrics" / "soe_hourly.prom")
    assert value(smp, "soe_run_success", model=MODEL) == 0
    assert not any(n == "soe_generation_rejected" for n, _ in smp)  # no generation was judged
    assert value(smp, "soe_failed_intervals") == 2


def test_training_and_backfill_files(prom_dir):
    tr = samples(prom_dir / "soe_training.prom")
    assert value(tr, "soe_training_promoted") == 1
    assert value(tr, "soe_stage_seconds", stage="train") == pytest.approx(95.2)
    ndcg = {
        s: value(tr, "soe_training_eval", role="candidate", scorer=s, metric="ndcg@10")
        for s in ("model", "pop")
    }
    assert ndcg == {"model": pytest.approx(0.176), "pop": pytest.approx(0.0968)}
    bf = samples(prom_dir / "soe_backfill.prom")
    assert value(bf, "soe_generation_coverage") == 1.0
    assert value(bf, "soe_stage_output_rows", stage="encode") == 400
    assert value(bf, "soe_generation_newest_timestamp_seconds") == T0.timestamp()


def test_a_rerun_repairs_the_failed_interval(settings, history):
    layout = settings.layout()
    t = history.rejected
    manifest = read_manifest(layout, "soe_hourly", history.hours[-2])
    record_run(
        layout,
        "soe_hourly",
        t,
        {"interval": [stamp(t - HOUR), stamp(t)], "model_version": MODEL, "stages": manifest["stages"]},
    )
    smp = samples(layout.root / "metrics" / "soe_hourly.prom")
    assert value(smp, "soe_run_success") == 1 and value(smp, "soe_failed_intervals") == 0
    assert value(smp, "soe_generation_newest_timestamp_seconds") == t.timestamp()


def test_metrics_dir_setting_and_default(settings, tmp_path, monkeypatch):
    layout = settings.layout()
    assert metrics.textfile_dir(layout, tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("SOE_DATA__ROOT", str(layout.root))
    monkeypatch.setenv("SOE_ORCHESTRATION__METRICS_DIR", str(tmp_path / "textfile"))
    assert metrics.textfile_dir(layout) == tmp_path / "textfile"  # the process configuration, same data root
    monkeypatch.setenv("SOE_DATA__ROOT", str(tmp_path / "another-root"))
    assert metrics.textfile_dir(layout) == layout.root / "metrics"
    monkeypatch.delenv("SOE_ORCHESTRATION__METRICS_DIR")
    monkeypatch.setenv("SOE_DATA__ROOT", str(layout.root))
    assert metrics.textfile_dir(layout) == layout.root / "metrics"


def test_a_metrics_failure_never_fails_the_run(settings, tmp_path, caplog):
    layout = settings.layout()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    path = record_run(layout, "soe_hourly", T0, {"model_version": MODEL, "stages": {}}, metrics_dir=blocker)
    assert path.is_file() and read_manifest(layout, "soe_hourly", T0)["status"] == "done"
    assert "could not write the Prometheus textfile" in caplog.text


def test_parse_rejection():
    assert metrics.parse_rejection("DrillFailure('encoder shard 1 fails on purpose')") == (None, [])
    msg = (
        "GenerationRejected('generation v-1 as_of=20260101T0900Z rejected: "
        "coverage: 3 of 9 expected users have no vector; recall: graph recall@k 0.850')"
    )
    assert metrics.parse_rejection(msg) == ("v-1", ["coverage", "recall"])


# -- deploy/monitoring --------------------------------------------------------------------------------
def referenced(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours are soe_*, the exporters' redis_* / node_*)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values (regexes) are not metric names
    return set(re.findall(r"\b((?:soe|redis|node)_[A-Za-z0-9_]+)\b", expr))


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def exported(settings, history) -> set[str]:
    """Every metric name with a sample in the textfiles of a run history (done, rejected and failed runs)."""
    layout = settings.layout()
    names = {n for p in (layout.root / "metrics").glob("*.prom") for n, _ in samples(p)}
    done = read_manifest(layout, "soe_hourly", history.hours[-2])
    names |= {n for n, _ in samples(metrics.export_run(layout, done, layout.root / "done"))}
    return names


def test_rules_and_dashboard_read_only_exported_metrics_and_use_every_one(settings, history):
    names = exported(settings, history)
    assert names == set(metrics.METRICS)  # the history exercises every metric the module declares
    rules = {a: referenced(e) for a, e in rule_exprs().items()}
    assert set(rules) == {
        "SoeGenerationStale",
        "SoeGenerationRejected",
        "SoeGraphRecallLow",
        "SoeQuarantineSpike",
        "SoeRedisMemoryHigh",
        "SoeBatchRunFailed",
        "SoeBatchMetricsAbsent",
    }
    dash = set().union(*(referenced(e) for e in dashboard_exprs()))
    used = dash | set().union(*rules.values())
    assert used - names - EXTERNAL == set(), "rules/dashboard read metrics no run exports"
    assert names - dash == set(), "exported metrics without a dashboard panel"
    assert ALERTED <= set().union(*rules.values())
    assert rules["SoeRedisMemoryHigh"] == {"redis_memory_used_bytes", "redis_memory_max_bytes"}


def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24


def test_alert_rules_with_promtool(settings, history):
    """`promtool test rules` when promtool is installed (apt-get install prometheus); else the rules are
    parsed and every expression checked against the exported metrics (the check above, alone)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        names = exported(settings, history) | EXTERNAL
        for name, expr in rule_exprs().items():
            assert referenced(expr) and referenced(expr) <= names, name
        pytest.skip("promtool not on PATH (apt-get install prometheus): rules only parsed, names checked")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    for p in (settings.layout().root / "metrics").glob("*.prom"):  # the exposition format lints clean too
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=p.read_text(), capture_output=True, text=True, timeout=60
        )
        assert lint.returncode == 0, (p.name, lint.stdout + lint.stderr)
