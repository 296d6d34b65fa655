"""The training and backfill DAGs through `airflow dags test` (slow: two Airflow runs with training).

The same flows run in-process in tests/test_e2e_airflow.py (every default test run); this module proves
the Airflow wiring of them: trainset -> train -> evaluate -> gate -> promote (the promoted-model
asset event), then the backfill DAG with the promoted model's conf -> pointer switch. (The scheduler
itself running the asset-triggered backfill is tests/test_airflow_scheduler.py.)
"""

from __future__ import annotations

import pytest

from soe.flows import stages
from soe.flows.manifest import read_manifest
from tests.test_e2e_airflow import BOOT, HOUR, START, T0, tiny_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_training_dag_promotes_and_backfill_dag_switches(tmp_path, redis_single_server):
    import redis as redis_py

    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.flows import hourly
    from soe.flows.airflow_run import AirflowHome

    redis = redis_single_server.redis_settings(buckets=32)
    redis_py.Redis(host=redis.host, port=redis.port).flushall()
    s = tiny_settings(tmp_path / "data", redis)
    write_log(
        generate(
            SyntheticConfig(
                n_users=200,
                n_items=1000,
                n_clusters=4,
                hours=BOOT + 1,
                start=str(START),
                base_events_per_user=30,
                seed=2,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, T0 - HOUR, T0)
    home = AirflowHome(tmp_path / "airflow", s)

    r = home.dags_test("soe_training", T0)
    assert r.ok, r.tail(80)
    m = read_manifest(s.layout(), "soe_training", T0)
    model = m["stages"]["train"]["model"]
    assert m["stages"]["gate"]["promote"] and stages.current_model(s) is None  # training never switches

    r = home.dags_test("soe_backfill", T0, conf={"model": model})
    assert r.ok, r.tail(80)
    assert stages.current_model(s) == model
    known = stages.state_user_ids(s, T0)
    assert stages.vectors_found(s, model, known) == len(known)
