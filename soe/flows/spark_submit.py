"""Entry point for ``spark-submit`` (the cluster launcher): the same functions as the `soe` commands.

    spark-submit --master yarn soe/flows/spark_submit.py sequences \
        --interval 2026-01-01T00:00Z/2026-01-01T01:00Z
    spark-submit ... soe/flows/spark_submit.py backfill --interval START/END
    spark-submit ... soe/flows/spark_submit.py trainset time_split --window-hours 24

The settings come from ``--config`` / ``$SOE_CONFIG`` and ``SOE_*`` like everywhere else; the
SparkSession is the one spark-submit configured (``spark.launcher: spark-submit`` makes
`pipelines.spark.spark_session` leave master and resources to the submitter). The manifest is
printed as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from core.layout import parse_interval, utc
    from pipelines.hourly import backfill_sequences, update_sequences
    from pipelines.trainset import build_trainset
    from soe.config import load_settings

    parser = argparse.ArgumentParser(prog="soe/flows/spark_submit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (default: $SOE_CONFIG, else defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sequences", "backfill"):
        sub.add_parser(name).add_argument("--interval", required=True)
    ts = sub.add_parser("trainset")
    ts.add_argument("kind")
    ts.add_argument("--split-time", default=None)
    ts.add_argument("--window-hours", type=int, default=24)
    ts.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    if args.command == "trainset":
        split = utc(args.split_time) if args.split_time else None
        result = {
            "path": str(
                build_trainset(
                    settings.pipeline(),
                    args.kind,
                    split_time=split,
                    window_hours=args.window_hours,
                    name=args.name,
                )
            )
        }
    else:
        start, end = parse_interval(args.interval)
        result = (
            update_sequences(settings.pipeline(), start, end)
            if args.command == "sequences"
            else {"runs": backfill_sequences(settings.pipeline(), start, end)}
        )
    print(json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
