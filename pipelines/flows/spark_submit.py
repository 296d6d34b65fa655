"""The application SparkSubmitOperator runs (launcher "spark-submit"): the same sequences step.

    spark-submit ... pipelines/flows/spark_submit.py --interval START/END

It loads the Settings the same way every task does (``$SOE_CONFIG`` + ``SOE_*`` on the driver) and
calls `pipelines.flows.hourly.sequences`, the function the local launcher calls in-process, so the
two launchers share one code path. Spark properties of the cluster come from spark-submit
(``deploy/spark/spark-defaults.conf``); ``settings.spark.conf`` is applied on top by the session.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="SoE hourly sequences step (spark-submit launcher)")
    parser.add_argument("--interval", required=True, help="START/END in ISO 8601 (the DAG's data interval)")
    args = parser.parse_args(argv)
    from pipelines.flows.dag_support import normalise_interval, run_settings
    from pipelines.flows.hourly import sequences

    start_s, _, end_s = args.interval.partition("/")
    result = sequences(run_settings(), *normalise_interval(start_s, end_s))
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
