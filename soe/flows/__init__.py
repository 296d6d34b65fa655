"""The flows: how the stages become the product that users schedule.

Every hourly refresh, training run and backfill is a short list of *steps*; each step is a plain
function of ``(settings, ...)`` that is idempotent for its inputs and publishes its output
atomically (core.atomic). The same step functions are called from three places, so there is one
implementation and three launchers:

* the Airflow DAGs in ``dags/`` (one task per step, dynamic task mapping over shards);
* ``soe refresh --interval START/END`` (`hourly.run_hourly`: the steps in a loop, no Airflow);
* the main job (`main_job`), which runs the hourly DAG with ``airflow dags test``.

Modules:

* `settings`   the ``flows`` config section (pools, queues, sensor, promotion gate knobs).
* `stages`     the single adapter onto the stage functions of pipelines/, encoder/ and store/.
* `hourly`     the hourly steps: wait -> sequences -> encode[shard] -> publish[shard] -> graph ->
               validate -> manifest -> retention.
* `checks`     validation of a generation (coverage, norms/NaN, drift, graph recall).
* `manifest`   run manifests (what ran, per-stage seconds, counts) and failure alerts.
* `retention`  removal of old snapshots, never the newest complete one.
* `gate`       the promotion gate (NDCG@10 and staleness).
* `training`   trainset -> train -> evaluate vs current -> gate; `backfill`: re-encode all users.
* `airflow_run` running DAGs with ``airflow dags test`` in an isolated AIRFLOW_HOME.
* `main_job`   the README's first command.
"""
