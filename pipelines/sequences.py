"""Last-N sequences in Spark: build them from events, and merge new events into a state.

An event inside a sequence is a struct ``ev = (ts, event_type, item_id, category_id, advertiser_id,
campaign_id)``. Field order is the sort order: sorting the structs ascending orders a user's events
oldest -> newest by ``ts``, and ties on ``ts`` are broken by the remaining fields, so the order (and
which events survive the cut to N) is deterministic and independent of partitioning. The sequence
contract stores the same thing column-wise: one list per field, oldest -> newest.

Two ways to sequences:

* `build_state` (bootstrap, full rebuild, compaction source): group all valid events by user,
  ``sort_array``, keep the last N. One shuffle of the whole history.
* `merge_state` (the hourly update): only the interval's new events are shuffled (grouped per
  user). They meet the active users' *previous* rows only (`pipelines.state.fetch_current_rows`
  picks those from the layered state). New events already present in a user's old
  sequence are duplicates; the rest are merged, sorted and cut to N. Cost: new events + active
  users. The state itself is written by `pipelines.hourly` as a delta layer (or a compaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from core.contracts import ATTRIBUTE_COLUMNS, SEQUENCE
from pipelines.spark import spark_schema

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

EV_FIELDS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)  # sort order of an event struct
CONTEXT = ("device", "country")  # carried beside a new event only to quarantine it as it arrived
SEQUENCE_COLUMNS = tuple(f.name for f in SEQUENCE.schema)
EV_TYPE = (
    "struct<"
    + ",".join(
        f"{c}:{'timestamp' if c == 'ts' else 'string' if c == 'event_type' else 'bigint'}" for c in EV_FIELDS
    )
    + ">"
)


def ev_struct() -> Column:
    """The event struct of an event row (typed event columns)."""
    from pyspark.sql import functions as F

    return F.struct(*[F.col(c) for c in EV_FIELDS]).cast(EV_TYPE)


def last_n(ordered: Column, max_len: int) -> Column:
    """The newest ``max_len`` of an array of event structs already sorted oldest -> newest.

    (Sort in the projection before this one: a sort inside would be evaluated twice.)"""
    from pyspark.sql import functions as F

    return F.slice(ordered, F.greatest(F.size(ordered) - max_len + 1, F.lit(1)), F.lit(max_len))


def to_sequence(df: DataFrame, events: str, as_of: datetime) -> DataFrame:
    """(user_id, <events> array<ev>) -> the sequence contract's columns, as of ``as_of``."""
    from pyspark.sql import functions as F

    return df.select(
        F.col("user_id"),
        F.lit(as_of).cast("timestamp").alias("as_of"),
        F.size(events).cast("int").alias("n_events"),
        *[F.col(events).getField(c).alias(c) for c in EV_FIELDS],
    )


def empty_state(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], spark_schema(SEQUENCE.schema))


def build_state(events: DataFrame, as_of: datetime, max_len: int) -> DataFrame:
    """Sequences from deduplicated valid events (one row per user), as of ``as_of``."""
    from pyspark.sql import functions as F

    grouped = events.groupBy("user_id").agg(F.sort_array(F.collect_list(ev_struct())).alias("events"))
    return to_sequence(
        grouped.select("user_id", last_n(F.col("events"), max_len).alias("events")), "events", as_of
    )


def group_new_events(new_events: DataFrame) -> DataFrame:
    """(user_id, new): each user's new events as event structs, with their context (for the quarantine)."""
    from pyspark.sql import functions as F

    return new_events.groupBy("user_id").agg(
        F.collect_list(F.struct(ev_struct().alias("ev"), *[F.col(c) for c in CONTEXT])).alias("new")
    )


def merge_rows(df: DataFrame, max_len: int) -> DataFrame:
    """Merge each user's new events into the old sequence, row by row (no shuffle).

    ``df``: ``user_id``, ``known``, the old sequence as the contract's sorted lists (`EV_FIELDS`,
    possibly empty) and ``new`` (array of (ev, context) from `group_new_events`). Returns
    ``user_id``, ``known``, ``n_events`` and the merged lists (old + fresh, sorted, the newest
    ``max_len``), plus

    * ``fresh``: how many new events were not already in the old sequence;
    * ``repeats``: the new events that were (re-deliveries), with their context, for the quarantine.

    Fast path: new events newer than the user's newest old event cannot repeat an old event and sort
    after all of it, so they are sorted among themselves and appended list by list; the old lists
    are never unpacked. Slow path, only for users with other new events (late events,
    re-deliveries: ts <= the newest old ts): the old lists are zipped into event structs, compared
    (``array_except``: struct equality, a null field equal to a null field, as in the sequence key)
    and re-sorted. Each step is its own projection so every array is computed once (Spark does not
    collapse projections that would repeat an expensive expression).
    """
    from pyspark.sql import functions as F

    lists = [F.col(c) for c in EV_FIELDS]
    keep = ["user_id", "known", *EV_FIELDS]
    step = df.select(*keep, "new", F.try_element_at("ts", F.lit(-1)).alias("_last"))
    is_ahead = lambda x: F.coalesce(x.getField("ev").getField("ts") > F.col("_last"), F.lit(True))  # noqa: E731
    step = step.select(
        *keep,
        F.sort_array(F.filter("new", is_ahead).getField("ev")).alias("_ahead"),
        F.filter("new", lambda x: ~is_ahead(x)).alias("_behind"),
    )
    slow = F.size("_behind") > 0
    step = step.select(
        *keep, "_ahead", "_behind", F.when(slow, F.arrays_zip(*lists).cast(f"array<{EV_TYPE}>")).alias("_old")
    )
    step = step.select(
        *keep,
        "_ahead",
        "_behind",
        "_old",
        F.when(slow, F.array_except(F.col("_behind").getField("ev"), F.col("_old"))).alias("_late"),
    )
    step = step.select(
        *keep,
        "_ahead",
        "_behind",
        "_old",
        "_late",
        F.when(slow, F.sort_array(F.concat("_old", "_ahead", "_late"))).alias("_sorted"),
    )
    n_merged = F.when(slow, F.size("_sorted")).otherwise(F.size("ts") + F.size("_ahead"))
    step = step.select(
        "*",
        F.greatest(n_merged - max_len + 1, F.lit(1)).alias("_from"),
        F.least(n_merged, F.lit(max_len)).alias("_n"),
    )
    merged = {
        c: F.when(slow, F.col("_sorted").getField(c)).otherwise(
            F.concat(F.col(c), F.col("_ahead").getField(c))
        )
        for c in EV_FIELDS
    }
    seen = lambda x: F.exists("_old", lambda o: o.eqNullSafe(x.getField("ev")))  # noqa: E731
    late = F.coalesce(F.size("_late"), F.lit(0))
    return step.select(
        "user_id",
        "known",
        (F.size("_ahead") + late).alias("fresh"),
        F.when(F.size("_behind") > late, F.filter("_behind", seen))
        .otherwise(F.array().cast(new_type()))
        .alias("repeats"),
        F.col("_n").cast("int").alias("n_events"),
        *[F.slice(merged[c], F.col("_from"), F.col("_n")).alias(c) for c in EV_FIELDS],
    )


def as_sequence(df: DataFrame, as_of: datetime) -> DataFrame:
    """Rows with ``user_id``, ``n_events`` and the lists (e.g. `merge_rows`) -> the sequence contract."""
    from pyspark.sql import functions as F

    return df.select(
        "user_id", F.lit(as_of).cast("timestamp").alias("as_of"), F.col("n_events").cast("int"), *EV_FIELDS
    )


def empty_lists() -> list[Column]:
    """The list columns of an empty sequence (a user the state does not know yet)."""
    from pyspark.sql import functions as F

    types = {"ts": "timestamp", "event_type": "string"}
    return [F.array().cast(f"array<{types.get(c, 'bigint')}>").alias(c) for c in EV_FIELDS]


def new_type() -> str:
    """The Spark type of `group_new_events`'s ``new`` column."""
    return f"array<struct<ev:{EV_TYPE},{','.join(f'{c}:string' for c in CONTEXT)}>>"


def merge_state(previous: DataFrame, new: DataFrame, max_len: int) -> DataFrame:
    """Merge each user's new events (`group_new_events`) into the user's previous sequence (a join).

    ``previous``: sequence-contract rows, at most one per user. Returns one row per user of ``new``
    with the columns of `merge_rows`; ``known``: the user had a previous sequence. The active users
    are the rows with ``fresh > 0``. In the hourly update ``previous`` holds only the active users'
    rows (`pipelines.state.fetch_current_rows`), so both sides of the join are small.
    """
    from pyspark.sql import functions as F

    joined = new.join(previous.select("user_id", *EV_FIELDS), "user_id", "left")
    known = F.col("ts").isNotNull()
    return merge_rows(
        joined.select(
            "user_id",
            "new",
            known.alias("known"),
            *[F.when(known, F.col(c)).otherwise(e).alias(c) for c, e in zip(EV_FIELDS, empty_lists())],
        ),
        max_len,
    )


def repeat_rows(merged: DataFrame) -> DataFrame:
    """The ``repeats`` of `merge_state` as event rows (user_id, event columns, context)."""
    from pyspark.sql import functions as F

    r = merged.select("user_id", F.explode("repeats").alias("r"))
    return r.select(
        "user_id",
        *[F.col("r.ev").getField(c).alias(c) for c in EV_FIELDS],
        *[F.col(f"r.{c}").alias(c) for c in CONTEXT],
    )
