"""Reading and validating the raw event log in Spark.

The event log is partitioned by **arrival hour** (``events/dt=D/hour=H``); a partition counts only
once it holds a ``_SUCCESS`` marker. `read_validated` reads the published partitions of a range of
arrival hours and validates every row in the executors with the foundation's reader and rules, the
same code ``soe validate`` runs: the driver only lists the files (one Spark task per file, or per
128 MiB of a large one); each task opens its file with `core.event_files.read_event_file` and hands
each conformed batch to `core.validation.row_reasons` with the rules of the file's arrival hour
(interval ``[H, H+1h)``). Spark's own Parquet reader never sees an event file, so no file can fail
the job: a file that cannot be read or conformed becomes one quarantine record (reason, file, rows,
detail) and the hour goes on with its other files. No rule is re-implemented here. The result is one
DataFrame (`VALIDATED`): the typed event columns, ``arrival_hour``, and for rejected rows a
``reason`` plus the row as it arrived, as text (the quarantine columns).

Duplicates are not a row rule. `dedup_keep_first` drops repeats of an event's **sequence key**
(`core.validation.SEQ_KEY`: user, ts, event type, item, attributes: every column a sequence keeps),
keeping the copy that arrived first, then the one with the smallest context (nulls first): the copy
`core.validation.duplicate_mask` keeps too. The repeats become quarantine rows with reason
``duplicate``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete
from core.contracts import ATTRIBUTE_COLUMNS, EVENT
from core.event_files import FileProblem, event_files, no_reason, read_event_file, splits_for
from core.forget import ForgetList, null_rows
from core.layout import Layout, hours
from core.validation import (
    FORGOTTEN,
    QUARANTINE_SCHEMA,
    SEQ_KEY,
    ValidationRules,
    count_reasons,
    file_records,
    quarantine_table,
    row_reasons,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("soe.pipelines")

EVENT_COLUMNS = tuple(f.name for f in EVENT.schema)
Q_FIELDS = [f.with_name(f"q_{f.name}").with_nullable(True) for f in QUARANTINE_SCHEMA if f.name != "reason"]
Q_COLUMNS = tuple(f.name for f in Q_FIELDS)  # the raw row as text, its file, rows, detail

# Output of the validator: typed event columns (null where a rejected value could not be typed),
# the arrival hour (epoch hours), the reason (null = valid) and the quarantine columns (rejected rows).
VALIDATED = pa.schema(
    [pa.field(f.name, pa.timestamp("us", tz="UTC") if f.name == "ts" else f.type) for f in EVENT.schema]
    + [pa.field("arrival_hour", pa.int64()), pa.field("reason", pa.string())]
    + Q_FIELDS
)
# The same without the quarantine columns and the context columns: for history reads (bootstrap,
# rebuild, training sets) that keep only valid rows. Fewer columns through the JVM <-> Python Arrow
# bridge, and the context columns are not even read from the files.
SLIM = pa.schema([f for f in VALIDATED if not f.name.startswith("q_")])
CONTEXT_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in SEQ_KEY)


def event_partitions(layout: Layout, start: datetime, end: datetime) -> list[Path]:
    """The published (``_SUCCESS``) event partitions whose arrival hour is in [start, end)."""
    return [p for p in (layout.event_partition(h) for h in hours(start, end)) if is_complete(p)]


def _file_tasks(partitions: list[Path]) -> list[tuple[str, int, int, int]]:
    """(file, arrival hour in epoch hours, split, splits) per task. Listing only: no file is opened here."""
    from core.datasets.events import partition_hour

    tasks = []
    for part in partitions:
        hour = int(partition_hour(part).timestamp()) // 3600
        for f in event_files(part):
            if not os.access(f, os.R_OK):
                raise PermissionError(
                    f"{f}: the event file cannot be read (permission denied); fix its "
                    f"permissions and re-run the hour (nothing was written)"
                )
            n = splits_for(f)
            tasks += [(str(f), hour, i, n) for i in range(n)]
    return tasks


def _validate_files(rules: ValidationRules, keep_raw: bool = True, batch_rows: int = 100_000):
    """The function ``mapInArrow`` runs in the executors: read each file, apply the rules of its hour."""
    out_schema = VALIDATED if keep_raw else SLIM
    columns = None if keep_raw else ATTRIBUTE_COLUMNS  # the history reads skip the context columns
    n_event = len(EVENT_COLUMNS)

    def event_part(typed: pa.Table, hour: int, reasons: list) -> list[pa.Array]:
        n = typed.num_rows
        cols = [typed[c].cast(out_schema.field(c).type) for c in EVENT_COLUMNS]
        return cols + [pa.array(np.full(n, hour, dtype=np.int64)), pa.array(reasons, pa.string())]

    def no_quarantine(n: int) -> list[pa.Array]:
        return [pa.nulls(n, f.type) for f in Q_FIELDS] if keep_raw else []

    def with_quarantine(q: pa.Table) -> list[pa.Array]:
        return [q[f.name[2:]].combine_chunks().cast(f.type) for f in Q_FIELDS]

    def output(
        typed: pa.Table, hour: int, reasons: np.ndarray, raw: pa.Table, source: str
    ) -> Iterator[pa.RecordBatch]:
        ok = no_reason(reasons)
        bad = np.flatnonzero(~ok)
        if not keep_raw or not len(bad):
            cols = event_part(typed, hour, reasons.tolist()) + no_quarantine(typed.num_rows)
            yield from pa.Table.from_arrays(cols, schema=out_schema).to_batches()
            return
        good = typed.filter(pa.array(ok))
        cols = event_part(good, hour, [None] * good.num_rows) + no_quarantine(good.num_rows)
        yield from pa.Table.from_arrays(cols, schema=out_schema).to_batches()
        take = pa.array(bad)
        q = quarantine_table(raw.take(take), reasons[bad], source=source)
        rejected = null_rows(typed.take(take), reasons[bad] == FORGOTTEN, keep=())  # forgotten: no value kept
        cols = event_part(rejected, hour, reasons[bad].tolist()) + with_quarantine(q)
        yield from pa.Table.from_arrays(cols, schema=out_schema).to_batches()

    def problem(p: FileProblem, hour: int) -> Iterator[pa.RecordBatch]:
        q = file_records([p])
        cols = [pa.nulls(1, f.type) for f in out_schema][:n_event]
        cols += [pa.array([hour], pa.int64()), pa.array([p.reason], pa.string())]
        cols += with_quarantine(q) if keep_raw else []
        yield from pa.Table.from_arrays(cols, schema=out_schema).to_batches()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            tasks = zip(*[batch.column(c).to_pylist() for c in ("path", "arrival_hour", "split", "splits")])
            for path, hour, split, splits in tasks:
                hour_rules = rules.for_hour(datetime.fromtimestamp(hour * 3600, tz=UTC))
                for item in read_event_file(
                    path, columns=columns, batch_rows=batch_rows, split=split, splits=splits
                ):
                    if isinstance(item, FileProblem):
                        yield from problem(item, hour)
                        continue
                    typed, reasons = row_reasons(item, hour_rules)
                    yield from output(typed, hour, reasons, item.raw, item.source)

    return run


def empty_validated(spark: SparkSession, keep_raw: bool = True) -> DataFrame:
    from pipelines.spark import spark_schema

    return spark.createDataFrame([], spark_schema(VALIDATED if keep_raw else SLIM))


def read_validated(
    spark: SparkSession,
    layout: Layout,
    partitions: list[Path],
    events_settings,
    keep_raw: bool = True,
    forget: ForgetList | None = None,
) -> DataFrame:
    """Every row of these partitions, validated (schema `VALIDATED`, or `SLIM` without ``keep_raw``).

    Lazy; nothing reaches the driver. ``keep_raw=False`` is for reads that keep only the valid rows'
    sequence columns: the context columns are not read and no raw text comes back. A file quarantined
    whole is one row with its reason (and, with ``keep_raw``, its path, rows and detail).

    ``forget``: the forget list (default: read from the data root); its users' events are rejected
    with reason ``forgotten`` and keep no value, in every read (hourly, bootstrap, rebuild, trainsets).
    """
    from pipelines.spark import spark_schema

    tasks = _file_tasks(partitions)
    if not tasks:
        return empty_validated(spark, keep_raw)
    batch_rows = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "100000") or 100_000)
    forget = forget if forget is not None else ForgetList.load(layout.root)
    rules = ValidationRules.from_settings(events_settings, forgotten=forget.ids)
    validate = _validate_files(rules, keep_raw, max(1, batch_rows))
    slices = min(len(tasks), max(1, 4 * spark.sparkContext.defaultParallelism))
    files = spark.sparkContext.parallelize(tasks, slices).toDF(
        "path string, arrival_hour long, split int, splits int"
    )
    return files.mapInArrow(validate, spark_schema(VALIDATED if keep_raw else SLIM))


def valid_events(validated: DataFrame) -> DataFrame:
    """The valid rows: typed event columns plus ``arrival_hour``."""
    from pyspark.sql import functions as F

    return validated.where(F.col("reason").isNull()).select(*EVENT_COLUMNS, "arrival_hour")


def rejected_rows(validated: DataFrame) -> DataFrame:
    """The rejected rows and whole-file records in QUARANTINE_SCHEMA (raw values as text, reason, file...)."""
    from pyspark.sql import functions as F

    cols = [
        F.col("reason") if f.name == "reason" else F.col(f"q_{f.name}").alias(f.name)
        for f in QUARANTINE_SCHEMA
    ]
    return validated.where(F.col("reason").isNotNull()).select(*cols)


def as_quarantine(events: DataFrame, reason: str) -> DataFrame:
    """Typed valid-looking rows (e.g. duplicates) as quarantine rows: text like `quarantine_table`."""
    from pyspark.sql import functions as F

    cols = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "reason":
            cols.append(F.lit(reason).alias("reason"))
        elif f.name == "ts":
            cols.append(F.date_format(F.col("ts"), "yyyy-MM-dd'T'HH:mm:ss").alias("ts"))
        elif f.name == "rows":
            cols.append(F.lit(1).cast("long").alias("rows"))
        elif f.name in ("source_file", "detail"):  # a duplicate is a property of the run, not of one file
            cols.append(F.lit(None).cast("string").alias(f.name))
        else:
            cols.append(F.col(f.name).cast("string").alias(f.name))
    return events.select(*cols)


def dedup_keep_first(valid: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(kept, repeats): one row per sequence key, the earliest arrival first; repeats are the rest.

    The window is partitioned by the key (whose first column is user_id), ordered by arrival and the
    context columns (nulls first), so which copy is kept is deterministic, and the same copy as
    `core.validation.duplicate_mask` keeps.
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
    """reason -> input rows of a written quarantine directory (read back with pyarrow: it is small).

    A whole-file record counts the rows of its file, and is logged as one warning line naming the
    file, the problem and what to do.
    """
    from core.sequence_state import data_files

    counts: dict[str, int] = {}
    for f in data_files(quarantine_dir):
        q = pq.read_table(f, columns=["reason", "source_file", "rows", "detail"])
        for reason, n in count_reasons(q).items():
            counts[reason] = counts.get(reason, 0) + n
        files = q.filter(pa.compute.is_valid(q["detail"]))
        records = zip(*[files[c].to_pylist() for c in ("source_file", "reason", "rows", "detail")])
        for path, reason, rows, detail in records:
            log.warning("%s", FileProblem(path, reason, detail, rows).message())
    return dict(sorted(counts.items()))
