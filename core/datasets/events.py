"""Reading the raw event log on one machine (Arrow), for checks and small jobs (Spark: pipelines/)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, publish_dir
from core.event_files import event_files
from core.forget import forgotten_ids
from core.layout import HOUR, Layout, parse_interval, utc
from core.settings import EventSettings
from core.validation import SeenEvents, ValidationResult, ValidationRules, file_json, validate_files


def partition_hour(path: Path) -> datetime:
    """``.../dt=2026-01-01/hour=05`` -> 2026-01-01T05:00Z."""
    return utc(f"{path.parent.name[3:]}T{path.name[5:]}:00:00")


def published_partitions(layout: Layout) -> list[Path]:
    """Every event partition with a completion marker, oldest first."""
    return sorted(p for p in layout.events.glob("dt=*/hour=*") if is_complete(p))


def read_partition(path: Path) -> pa.Table:
    """All Parquet files of one well-formed partition, as they are (no casting: the validator does that).

    For tools and tests on logs SoE wrote itself; anything that must survive bad files reads them one
    by one through `core.event_files` (as `validated_partitions` does).
    """
    files = event_files(Path(path))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def validated_partitions(
    layout: Layout, events: EventSettings, interval: str | None
) -> Iterator[tuple[datetime, ValidationResult]]:
    """(arrival hour, validation result) of each published partition, each hour with its own rules.

    Every file is read on its own by `core.event_files` (a file that cannot be used is one quarantine
    record; the hour goes on). Duplicates are counted as in one Spark run over the same hours: a
    repeat of a sequence key accepted earlier in the same hour or in an earlier hour of this call.
    """
    parts = published_partitions(layout)
    if interval:
        start, end = parse_interval(interval)
        parts = [p for p in parts if start <= partition_hour(p) < end]
    if not parts:
        where = f" in interval {interval}" if interval else ""
        raise FileNotFoundError(
            f"no published event partitions under {layout.events}{where}: run `soe generate` first"
        )
    base = ValidationRules.from_settings(events, forgotten=forgotten_ids(layout.root))  # `soe forget`
    seen = SeenEvents(events.max_lateness_hours)
    for part in parts:
        hour = partition_hour(part)
        yield hour, validate_files(event_files(part), base.for_hour(hour), seen=seen)


def validate_partitions(
    layout: Layout, events: EventSettings, interval: str | None, write_quarantine: bool = False
) -> dict[str, Any]:
    """Validate each published partition (its arrival hour is the interval); sum the counts.

    ``quarantined`` and ``reasons`` count input rows (a file quarantined whole counts its rows);
    ``quarantined_files`` lists those files with their reason, rows and problem.
    """
    totals: dict[str, Any] = {
        "partitions": 0,
        "valid": 0,
        "quarantined": 0,
        "reasons": {},
        "quarantined_files": [],
    }
    for hour, result in validated_partitions(layout, events, interval):
        totals["partitions"] += 1
        totals["valid"] += result.n_valid
        totals["quarantined"] += result.n_quarantined
        for reason, n in result.counts.items():
            totals["reasons"][reason] = totals["reasons"].get(reason, 0) + n
        totals["quarantined_files"] += [file_json(p) for p in result.files]
        if write_quarantine and result.quarantine.num_rows:
            with publish_dir(layout.quarantine(hour + HOUR) / "validate", {"counts": result.counts}) as tmp:
                pq.write_table(result.quarantine, tmp / "part-00000.parquet")
    totals["reasons"] = dict(sorted(totals["reasons"].items()))
    seen_rows = max(1, totals["valid"] + totals["quarantined"])
    totals["quarantined_share"] = round(totals["quarantined"] / seen_rows, 6)
    return totals
