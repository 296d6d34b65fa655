"""Reading and validating the raw event log in Spark.

The event log is partitioned by **arrival hour** (``events/dt=D/hour=H``); a partition counts only
once it holds a ``_SUCCESS`` marker. `read_validated` reads the published partitions of a range of
arrival hours and validates every row in the executors with the foundation validator:
``mapInArrow`` hands each Arrow batch to `core.validation.row_reasons` with the rules of the row's
arrival hour (interval ``[H, H+1h)``, the same rules as ``soe validate``). No rule is re-implemented
here. The result is one DataFrame (`VALIDATED`): the typed event columns, ``arrival_hour``, and for
rejected rows a ``reason`` plus the row as it arrived, as text (the quarantine columns).

Duplicates are not a row rule. `dedup_keep_first` drops repeats of an event's **sequence key**
(user, ts, event type, item, attributes: every column a sequence keeps), keeping the copy that
arrived first; exact copies are the common case, and two rows a sequence could not tell apart are
one event to it. The repeats become quarantine rows with reason ``duplicate``.

Files whose schema differs (a producer that wrote ``user_id`` as text, a missing optional column)
are read as their own group and validated with their own input schema, so one odd file neither
fails the hour nor forces the rest through a slow path. A file without a required column fails the
run with `ContractError` naming the file, before any output is written.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete
from core.contracts import ATTRIBUTE_COLUMNS, EVENT
from core.layout import HOUR_MS, Layout, hours
from core.validation import QUARANTINE_SCHEMA, ValidationRules, check_required_columns, row_reasons

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

EVENT_COLUMNS = tuple(f.name for f in EVENT.schema)
SEQ_KEY = ("user_id", "ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)  # what a sequence keeps of an event
Q_COLUMNS = tuple(f"q_{f.name}" for f in QUARANTINE_SCHEMA if f.name != "reason")  # raw row as text

# Output of the validator: typed event columns (null where a rejected value could not be typed),
# the arrival hour (epoch hours), the reason (null = valid) and the raw row as text (rejected rows).
VALIDATED = pa.schema(
    [pa.field(f.name, pa.timestamp("us", tz="UTC") if f.name == "ts" else f.type) for f in EVENT.schema]
    + [pa.field("arrival_hour", pa.int64()), pa.field("reason", pa.string())]
    + [pa.field(c, pa.string()) for c in Q_COLUMNS]
)
# The same without the raw text and the context columns: for history reads (bootstrap, rebuild,
# training sets) that keep only valid rows. Fewer columns through the JVM <-> Python Arrow bridge,
# which is what the validator's cost is made of.
SLIM = pa.schema([f for f in VALIDATED if not f.name.startswith("q_")])
CONTEXT_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in SEQ_KEY)


def event_partitions(layout: Layout, start: datetime, end: datetime) -> list[Path]:
    """The published (``_SUCCESS``) event partitions whose arrival hour is in [start, end)."""
    return [p for p in (layout.event_partition(h) for h in hours(start, end)) if is_complete(p)]


def _files_by_schema(partitions: list[Path]) -> list[list[Path]]:
    """Data files grouped by Parquet schema (footers only; no data is read on the driver)."""
    groups: dict[str, list[Path]] = {}
    for part in partitions:
        for f in sorted(part.glob("*.parquet")):
            schema = pq.read_schema(f)
            check_required_columns(schema, source=str(f))
            key = str(pa.schema([fld.remove_metadata() for fld in schema]))
            groups.setdefault(key, []).append(f)
    return list(groups.values())


def _validate_batches(event_types: tuple[str, ...], max_attribute_id: int, max_lateness_hours: int,
                      keep_raw: bool = True):
    """The function ``mapInArrow`` runs in the executors: foundation rules per arrival hour."""
    from datetime import timezone

    out_schema = VALIDATED if keep_raw else SLIM

    def to_output(typed: pa.Table, hour: int, reasons: np.ndarray, raw: pa.Table) -> Iterator[pa.RecordBatch]:
        ok = reasons == None  # noqa: E711 (elementwise on an object array)
        n = typed.num_rows
        cols = [typed[c].cast(out_schema.field(c).type) for c in EVENT_COLUMNS]
        cols += [pa.array(np.full(n, hour, dtype=np.int64)), pa.array(reasons.tolist(), pa.string())]
        if not keep_raw:
            yield from pa.Table.from_arrays(cols, schema=out_schema).to_batches()
            return
        bad = np.flatnonzero(~ok)
        if len(bad):
            from core.validation import quarantine_table

            q = quarantine_table(raw.take(pa.array(bad)), reasons[bad])
            full = pa.Table.from_arrays(cols + [pa.nulls(n, pa.string())] * len(Q_COLUMNS), schema=out_schema)
            good_t = full.filter(pa.array(ok))
            bad_t = full.take(pa.array(bad))
            for c, qc in zip(Q_COLUMNS, q.column_names):
                bad_t = bad_t.set_column(bad_t.schema.get_field_index(c), c, q[qc])
            yield from good_t.to_batches()
            yield from bad_t.to_batches()
        else:
            yield from pa.Table.from_arrays(cols + [pa.nulls(n, pa.string())] * len(Q_COLUMNS),
                                            schema=out_schema).to_batches()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            arrival = table["arrival_hour"].to_numpy()
            raw = table.drop_columns(["arrival_hour"])
            for hour in np.unique(arrival):
                mine = arrival == hour
                sub = raw if mine.all() else raw.filter(pa.array(mine))  # a task may read several partitions
                start = datetime.fromtimestamp(int(hour) * 3600, tz=timezone.utc)
                rules = ValidationRules(
                    event_types=event_types, max_attribute_id=max_attribute_id, interval_start=start,
                    interval_end=start + timedelta(hours=1), max_lateness_hours=max_lateness_hours,
                )
                typed, reasons = row_reasons(sub, rules)
                yield from to_output(typed, int(hour), reasons, sub)

    return run


def empty_validated(spark: "SparkSession", keep_raw: bool = True) -> "DataFrame":
    from pipelines.spark import spark_schema

    return spark.createDataFrame([], spark_schema(VALIDATED if keep_raw else SLIM))


def read_validated(spark: "SparkSession", layout: Layout, partitions: list[Path], events_settings,
                   keep_raw: bool = True) -> "DataFrame":
    """Every row of these partitions, validated (schema `VALIDATED`, or `SLIM` without ``keep_raw``).

    Lazy; nothing reaches the driver. ``keep_raw=False`` is for reads that keep only the valid rows'
    sequence columns: the context columns are not sent to the validator and no raw text comes back.
    """
    from pyspark.sql import functions as F

    from pipelines.spark import spark_schema

    validate = _validate_batches(
        tuple(events_settings.event_types), int(events_settings.max_attribute_id),
        int(events_settings.max_lateness_hours), keep_raw,
    )
    out = None
    for files in _files_by_schema(partitions):
        raw = spark.read.option("basePath", str(layout.events)).parquet(*[str(f) for f in files])
        raw = raw.withColumn("arrival_hour", F.unix_date(F.col("dt")).cast("long") * 24 + F.col("hour").cast("long"))
        raw = raw.drop("dt", "hour", *([] if keep_raw else CONTEXT_COLUMNS))
        part = raw.mapInArrow(validate, spark_schema(VALIDATED if keep_raw else SLIM))
        out = part if out is None else out.unionByName(part)
    return out if out is not None else empty_validated(spark, keep_raw)


def valid_events(validated: "DataFrame") -> "DataFrame":
    """The valid rows: typed event columns plus ``arrival_hour``."""
    from pyspark.sql import functions as F

    return validated.where(F.col("reason").isNull()).select(*EVENT_COLUMNS, "arrival_hour")


def rejected_rows(validated: "DataFrame") -> "DataFrame":
    """The rejected rows in QUARANTINE_SCHEMA (raw values as text + reason)."""
    from pyspark.sql import functions as F

    cols = [F.col(q).alias(q[2:]) for q in Q_COLUMNS]
    return validated.where(F.col("reason").isNotNull()).select(*cols, "reason")


def as_quarantine(events: "DataFrame", reason: str) -> "DataFrame":
    """Typed valid-looking rows (e.g. duplicates) as quarantine rows: text like `quarantine_table`."""
    from pyspark.sql import functions as F

    cols = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "reason":
            cols.append(F.lit(reason).alias("reason"))
        elif f.name == "ts":
            cols.append(F.date_format(F.col("ts"), "yyyy-MM-dd'T'HH:mm:ss").alias("ts"))
        else:
            cols.append(F.col(f.name).cast("string").alias(f.name))
    return events.select(*cols)


def dedup_keep_first(valid: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """(kept, repeats): one row per sequence key, the earliest arrival first; repeats are the rest.

    The window is partitioned by the key (whose first column is user_id), ordered by arrival and the
    context columns, so which copy is kept is deterministic.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = [F.col("arrival_hour"), *[F.col(c).asc_nulls_first() for c in EVENT_COLUMNS if c not in SEQ_KEY]]
    w = Window.partitionBy(*SEQ_KEY).orderBy(*order)
    ranked = valid.withColumn("_copy", F.row_number().over(w))
    kept = ranked.where(F.col("_copy") == 1).drop("_copy")
    repeats = ranked.where(F.col("_copy") > 1).drop("_copy")
    return kept, repeats


def reason_counts(quarantine_dir: Path) -> dict[str, int]:
    """reason -> rows of a written quarantine directory (read back with pyarrow: it is small)."""
    from collections import Counter

    from core.sequence_state import data_files

    counts: Counter = Counter()
    for f in data_files(quarantine_dir):
        counts.update(pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    return dict(sorted(counts.items()))
