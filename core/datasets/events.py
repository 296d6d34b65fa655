"""Reading the raw event log on one machine (Arrow), for checks and small jobs. Spark reads it in pipelines/."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, publish_dir
from core.layout import HOUR, Layout, parse_interval, utc
from core.settings import EventSettings
from core.validation import ValidationResult, ValidationRules, validate_events


def partition_hour(path: Path) -> datetime:
    """``.../dt=2026-01-01/hour=05`` -> 2026-01-01T05:00Z."""
    return utc(f"{path.parent.name[3:]}T{path.name[5:]}:00:00")


def published_partitions(layout: Layout) -> list[Path]:
    """Every event partition with a completion marker, oldest first."""
    return sorted(p for p in layout.events.glob("dt=*/hour=*") if is_complete(p))


def read_partition(path: Path) -> pa.Table:
    """All Parquet files of one partition, as they are (no casting: the validator does that)."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def validated_partitions(layout: Layout, events: EventSettings, interval: str | None
                         ) -> Iterator[tuple[datetime, ValidationResult]]:
    """(arrival hour, validation result) of each published partition, each hour with its own rules."""
    parts = published_partitions(layout)
    if interval:
        start, end = parse_interval(interval)
        parts = [p for p in parts if start <= partition_hour(p) < end]
    if not parts:
        where = f" in interval {interval}" if interval else ""
        raise FileNotFoundError(f"no published event partitions under {layout.events}{where}: run `soe generate` first")
    for part in parts:
        hour = partition_hour(part)
        rules = ValidationRules.from_settings(events, hour, hour + HOUR)
        yield hour, validate_events(read_partition(part), rules)


def validate_partitions(layout: Layout, events: EventSettings, interval: str | None,
                        write_quarantine: bool = False) -> dict[str, Any]:
    """Validate each published partition (its arrival hour is the interval); sum the counts."""
    totals: dict[str, Any] = {"partitions": 0, "valid": 0, "quarantined": 0, "reasons": {}}
    for hour, result in validated_partitions(layout, events, interval):
        totals["partitions"] += 1
        totals["valid"] += result.n_valid
        totals["quarantined"] += result.n_quarantined
        for reason, n in result.counts.items():
            totals["reasons"][reason] = totals["reasons"].get(reason, 0) + n
        if write_quarantine and result.n_quarantined:
            with publish_dir(layout.quarantine(hour + HOUR) / "validate", {"counts": result.counts}) as tmp:
                pq.write_table(result.quarantine, tmp / "part-00000.parquet")
    totals["quarantined_share"] = round(totals["quarantined"] / max(1, totals["valid"] + totals["quarantined"]), 6)
    return totals
