"""`spark-submit` of the sequence pipeline to a real Spark standalone cluster, with only a config change.

The real command line (`spark-submit --master spark://127.0.0.1:<port> ... soe/flows/spark_submit.py
sequences --interval S/E`, with ``SOE_SPARK__LAUNCHER=spark-submit``) runs a bootstrap hour and the
next hour against a master + worker on loopback (`tests/fixtures/spark_standalone.py`). The same two
hours of the same messy log are run in-process on the embedded default (local Spark, the `spark`
fixture) in another data root. The published outputs must be equal: every active shard's rows, and
the manifest's counts (valid, quarantined per reason, active users, shard sizes). The state
directory is not compared (its layout is internal and changing); the next hour reading it and
giving the same answer checks it indirectly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.datasets.synthetic import GeneratedLog, SyntheticConfig, generate, write_log
from core.layout import HOUR, utc
from soe.config import load_settings

REPO = Path(__file__).resolve().parents[1]
SUBMIT_APP = REPO / "soe" / "flows" / "spark_submit.py"
START = utc("2026-01-01T00:00Z")
# hour 0 is bootstrap history, hour 1 the bootstrap run, hour 2 the incremental run (late events
# of hours 0-2 arrive up to 3 hours later; only the partitions a run reads matter)
INTERVALS = [(START + HOUR, START + 2 * HOUR), (START + 2 * HOUR, START + 3 * HOUR)]
MAX_LEN = 6
SHARDS = 3
APP_NAME = "soe-submit-cluster-test"
SUBMIT_TIMEOUT_S = 300
JVM_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
# manifest fields that are content (not timings, not paths of the internal state)
COMPARED = (
    "as_of",
    "mode",
    "valid_events",
    "quarantined",
    "reasons",
    "active_users",
    "num_shards",
    "shard_sizes",
    "max_len",
)


def soe_env(root: Path) -> dict[str, str]:
    """The SoE settings both runs share (the cluster run adds only the launcher and Spark sizing)."""
    return {
        "SOE_DATA__ROOT": str(root),
        "SOE_SEQUENCES__MAX_LEN": str(MAX_LEN),
        "SOE_SEQUENCES__NUM_SHARDS": str(SHARDS),
        "SOE_SEQUENCES__STATE_FILES": "2",
        "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": "1",
    }


def interval_arg(start, end) -> str:
    return f"{start:%Y-%m-%dT%H:%MZ}/{end:%Y-%m-%dT%H:%MZ}"


def write_messy_log(root: Path, seed: int = 11) -> None:
    """Small log with late arrivals, malformed rows, null attributes and re-sent (duplicate) events."""
    log = generate(
        SyntheticConfig(
            n_users=40,
            n_items=300,
            n_clusters=4,
            hours=3,
            base_events_per_user=20,
            late_fraction=0.15,
            malformed_fraction=0.03,
            seed=seed,
        )
    )
    rng = np.random.default_rng(seed)
    events = log.events
    mask = pa.array(rng.random(events.num_rows) < 0.1)
    i = events.schema.get_field_index("category_id")
    events = events.set_column(
        i,
        "category_id",
        pc.if_else(mask, pa.nulls(events.num_rows, events.schema.field(i).type), events["category_id"]),
    )
    # at-least-once delivery: 20 valid events of hours 0-1 re-sent one hour after they first arrived
    n_valid = log.manifest["n_valid_events"]
    early = np.flatnonzero(log.arrival_hour[:n_valid] <= log.arrival_hour.min() + 1)
    resent = rng.choice(early, 20, replace=False)
    events = pa.concat_tables([events, events.take(pa.array(resent))])
    arrival = np.concatenate([log.arrival_hour, log.arrival_hour[resent] + 1])
    write_log(
        GeneratedLog(events, arrival, log.users, log.items, log.manifest),
        load_settings(environ=soe_env(root)).layout(),
    )


def driver_env(cluster, root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in cluster.env.items()
        if not k.startswith("SOE_") and k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
    }
    env.update(soe_env(root))
    env.update(
        {
            "SOE_SPARK__LAUNCHER": "spark-submit",  # the config change
            "SOE_SPARK__APP_NAME": APP_NAME,
        }
    )
    return env


def submit_command(
    cluster, start, end, shuffle_partitions: str, conf: dict[str, str], memory: str = "1g"
) -> list[str]:
    """The real spark-submit command line of one hour: the deploy's properties file, loopback, and
    ``conf`` (sizing for the test) on top."""
    cmd = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        cluster.master_url,
        "--properties-file",  # the deploy's starting point for the cluster
        str(REPO / "deploy" / "spark" / "spark-defaults.conf"),
    ]
    conf = {
        "spark.pyspark.python": sys.executable,
        "spark.driver.host": "127.0.0.1",
        "spark.local.dir": str(cluster.root / "local"),
        "spark.sql.shuffle.partitions": shuffle_partitions,
        # short JVMs on 2 shared cores: no C2 compiler, serial GC (test speed only)
        "spark.driver.extraJavaOptions": JVM_OPTS,
        "spark.executor.extraJavaOptions": JVM_OPTS,
        **conf,
    }
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += ["--executor-memory", memory, "--driver-memory", memory]
    return [*cmd, str(SUBMIT_APP), "sequences", "--interval", interval_arg(start, end)]


def spark_submit(cluster, root: Path, start, end, shuffle_partitions: str) -> dict:
    """Run the real spark-submit command line; returns its exit code, output and wall time."""
    # dynamic allocation stays on; one executor asked for at once instead of at the first job
    cmd = submit_command(
        cluster, start, end, shuffle_partitions, {"spark.dynamicAllocation.initialExecutors": "1"}
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=driver_env(cluster, root),
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - t0
    log = root.parent / f"driver-{start:%H%M}.log"  # kept beside the data root for a post-mortem
    log.write_text(
        f"$ {' '.join(cmd)}\nexit {proc.returncode} after {seconds:.1f} s\n--- stdout ---\n"
        f"{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "seconds": seconds,
        "log": log,
    }


def explain(run: dict, cluster) -> str:
    return (
        f"$ {' '.join(run['cmd'])}\nexit {run['rc']}\n--- stdout ---\n{run['stdout'][-4000:]}\n"
        f"--- stderr ---\n{run['stderr'][-6000:]}\n{cluster.logs()}"
    )


@pytest.fixture(scope="module")
def embedded(spark, tmp_path_factory):
    """The two hours in-process on the embedded default (local Spark)."""
    from pipelines.hourly import update_sequences

    root = tmp_path_factory.mktemp("embedded") / "data"
    write_messy_log(root)
    settings = load_settings(environ=soe_env(root))
    manifests = [update_sequences(settings.pipeline(), s, e, spark=spark) for s, e in INTERVALS]
    return root, manifests, spark.conf.get("spark.sql.shuffle.partitions")


@pytest.fixture(scope="module")
def submitted(spark_standalone, embedded, tmp_path_factory):
    """The same two hours through spark-submit on the standalone cluster, in another data root."""
    root = tmp_path_factory.mktemp("submitted") / "data"
    write_messy_log(root)
    runs = []
    for start, end in INTERVALS:
        # same shuffle partitions as the embedded session: the balanced-shard buckets follow it
        run = spark_submit(spark_standalone, root, start, end, shuffle_partitions=embedded[2])
        runs.append(run)
        if run["rc"] != 0:
            break
    return root, runs


def last_json_line(run: dict) -> dict:
    lines = [line for line in run["stdout"].splitlines() if line.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])


def active_rows(root: Path, as_of) -> list[list[dict]]:
    layout = load_settings(environ=soe_env(root)).layout()
    out = []
    for i in range(SHARDS):
        table = pq.read_table(layout.active_shard(as_of, i))
        out.append((table.schema, table.to_pylist()))
    return out


def test_spark_submit_exits_0_and_prints_the_manifest_last(submitted, spark_standalone):
    _, runs = submitted
    assert len(runs) == len(INTERVALS), explain(runs[-1], spark_standalone)
    for run, (_start, end) in zip(runs, INTERVALS):
        assert run["rc"] == 0, explain(run, spark_standalone)
        manifest = last_json_line(run)
        assert utc(manifest["as_of"]) == end
    assert [last_json_line(r)["mode"] for r in runs] == ["bootstrap", "incremental"]


def app_id(run: dict) -> str:
    """The application id the driver got from the standalone master (its own log says so)."""
    match = re.search(r"Connected to Spark cluster with app ID (app-[\w-]+)", run["stderr"])
    assert match, "the driver never connected to a Spark cluster"
    return match.group(1)


def test_the_applications_ran_on_the_standalone_master(submitted, spark_standalone):
    _, runs = submitted
    assert all(r["rc"] == 0 for r in runs), explain(runs[-1], spark_standalone)
    ids = [app_id(r) for r in runs]
    deadline = time.monotonic() + 30  # the master marks an app finished when its driver disconnects
    while True:
        state = spark_standalone.state()
        apps = {a["id"]: a for a in state["completedapps"]}
        if set(ids) <= set(apps) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(ids) <= set(apps), (ids, state, spark_standalone.logs())
    for i in ids:
        # our settings reached the driver (app name from SOE_SPARK__APP_NAME) and it ended cleanly
        assert apps[i]["name"] == APP_NAME and apps[i]["state"] == "FINISHED", apps[i]
        # the worker launched an executor for it, and the validator's Python ran there (mapInArrow)
        logs = [p.read_text(errors="replace") for p in (spark_standalone.work_dir / i).glob("*/stderr")]
        assert logs, f"no executor of {i} on the worker\n{spark_standalone.logs()}"
        assert any("Finished task" in log and "Starting Python task execution" in log for log in logs), i
    assert not [a for a in state["activeapps"] if a["name"] == APP_NAME]


def test_the_submitters_settings_are_kept(submitted, spark_standalone):
    """Under spark-submit the session is the submitter's: no local-only settings (the web UI stays
    on). That the submitter's spark.sql.shuffle.partitions is kept is shown by the equal shards below
    (the balanced-shard buckets follow it; the SoE default of 8 would give other shards)."""
    _, runs = submitted
    assert all(r["rc"] == 0 for r in runs), explain(runs[-1], spark_standalone)
    for run in runs:
        assert "Successfully started service 'SparkUI'" in run["stderr"], run["log"]


def test_cluster_outputs_equal_the_embedded_run(submitted, embedded, spark_standalone):
    sub_root, runs = submitted
    emb_root, emb_manifests, _ = embedded
    assert all(r["rc"] == 0 for r in runs), explain(runs[-1], spark_standalone)
    for run, expected in zip(runs, emb_manifests):
        got = last_json_line(run)
        assert {k: got[k] for k in COMPARED} == {
            k: json.loads(json.dumps(expected[k], default=str)) for k in COMPARED
        }
        as_of = utc(got["as_of"])
        sub_shards, emb_shards = active_rows(sub_root, as_of), active_rows(emb_root, as_of)
        for i, ((s_schema, s_rows), (e_schema, e_rows)) in enumerate(zip(sub_shards, emb_shards)):
            assert s_schema == e_schema, f"shard {i} schema"
            assert s_rows == e_rows, f"shard {i} of {as_of} differs"
        assert sum(len(rows) for _, rows in sub_shards) == got["active_users"]


def test_the_log_was_messy_enough(embedded):
    """Guard against an equality that holds only because the data was trivial."""
    root, manifests, _ = embedded
    reasons = {}
    for m in manifests:
        for k, v in m["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    assert reasons.get("duplicate", 0) > 0 and len(reasons) >= 3, reasons
    last = active_rows(root, utc(manifests[-1]["as_of"]))
    rows = [r for _, shard in last for r in shard]
    assert any(r["n_events"] == MAX_LEN for r in rows), "no user cut to N"
    assert any(c is None for r in rows for c in r["category_id"]), "no null attribute reached a sequence"
    assert all(len(shard) > 0 for _, shard in last)


def test_which_settings_win_under_spark_submit():
    """No Spark needed: the precedence the cluster run relies on, case by case."""
    from pipelines.settings import SparkSettings
    from pipelines.spark import BASE_CONF, local_driver_memory, spark_conf

    shuffle = "spark.sql.shuffle.partitions"
    submit = SparkSettings(launcher="spark-submit")  # master stays the default local[*]
    assert shuffle not in spark_conf(submit, submitted=[shuffle])  # the submitter's value is kept
    assert spark_conf(submit)[shuffle] == "8"  # nothing submitted: the SoE default
    explicit = SparkSettings(launcher="spark-submit", shuffle_partitions=16)
    assert spark_conf(explicit, submitted=[shuffle])[shuffle] == "16"  # explicit SoE setting wins
    assert "spark.ui.enabled" not in spark_conf(submit) and "spark.driver.memory" not in spark_conf(submit)
    assert BASE_CONF.items() <= spark_conf(submit, submitted=list(BASE_CONF)).items()  # contracts always
    local = spark_conf(SparkSettings())
    assert (
        local["spark.ui.enabled"] == "false"
        and local[shuffle] == "8"
        and local["spark.driver.memory"] == local_driver_memory("auto")
    )
    assert spark_conf(SparkSettings(driver_memory="4g"))["spark.driver.memory"] == "4g"
    gib = 2**30  # "auto": half the host's memory, 2g-32g
    assert [local_driver_memory("auto", n * gib) for n in (2, 24, 256)] == ["2048m", "12288m", "32768m"]
