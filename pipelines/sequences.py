"""Last-N sequences in Spark: build them from events, and merge new events into a state.

An event inside a sequence is a struct ``ev = (ts, event_type, item_id, category_id, advertiser_id,
campaign_id)``. Field order is the sort order: sorting the structs ascending orders a user's events
oldest -> newest by ``ts``, and ties on ``ts`` are broken by the remaining fields, so the order (and
which events survive the cut to N) is deterministic and independent of partitioning. The sequence
contract stores the same thing column-wise: one list per field, oldest -> newest.

Two ways to sequences:

* `build_state` (bootstrap, full rebuild, compaction source): group all valid events by user,
  ``array_sort``, keep the last N. One shuffle of the whole history.
* `merge_state` (the hourly update): only the interval's new events are shuffled (grouped per
  user). They meet the active users' *previous* rows only (`pipelines.state.current_rows_of`
  picks those from the layered state, map-only). New events already present in a user's old
  sequence are duplicates; the rest are merged, sorted and cut to N. Cost: new events + active
  users. The state itself is written by `pipelines.hourly` as a delta layer (or a compaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from soe.contracts import ATTRIBUTE_COLUMNS, SEQUENCE

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

EV_FIELDS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)  # sort order of an event struct
CONTEXT = ("device", "country")  # carried beside a new event only to quarantine it as it arrived
SEQUENCE_COLUMNS = tuple(f.name for f in SEQUENCE.schema)
EV_TYPE = "struct<" + ",".join(
    f"{c}:{'timestamp' if c == 'ts' else 'string' if c == 'event_type' else 'bigint'}" for c in EV_FIELDS
) + ">"


def ev_struct() -> "Column":
    """The event struct of an event row (typed event columns)."""
    from pyspark.sql import functions as F

    return F.struct(*[F.col(c) for c in EV_FIELDS]).cast(EV_TYPE)


def last_n(events: "Column", max_len: int) -> "Column":
    """Sort an array of event structs oldest -> newest and keep the newest ``max_len``."""
    from pyspark.sql import functions as F

    ordered = F.array_sort(events)
    return F.slice(ordered, F.greatest(F.size(ordered) - max_len + 1, F.lit(1)), F.lit(max_len))


def to_sequence(df: "DataFrame", events: str, as_of: datetime) -> "DataFrame":
    """(user_id, <events> array<ev>) -> the sequence contract's columns, as of ``as_of``."""
    from pyspark.sql import functions as F

    return df.select(
        F.col("user_id"),
        F.lit(as_of).cast("timestamp").alias("as_of"),
        F.size(events).cast("int").alias("n_events"),
        *[F.col(events).getField(c).alias(c) for c in EV_FIELDS],
    )


def sequence_events(state: "DataFrame") -> "Column":
    """A state row's list columns zipped back into an array of event structs."""
    from pyspark.sql import functions as F

    return F.arrays_zip(*[F.col(c) for c in EV_FIELDS]).cast(f"array<{EV_TYPE}>")


def empty_state(spark: "SparkSession") -> "DataFrame":
    from pipelines.spark import spark_schema

    return spark.createDataFrame([], spark_schema(SEQUENCE.schema))


def build_state(events: "DataFrame", as_of: datetime, max_len: int) -> "DataFrame":
    """Sequences from deduplicated valid events (one row per user), as of ``as_of``."""
    from pyspark.sql import functions as F

    grouped = events.groupBy("user_id").agg(F.collect_list(ev_struct()).alias("events"))
    return to_sequence(grouped.select("user_id", last_n(F.col("events"), max_len).alias("events")), "events", as_of)


def group_new_events(new_events: "DataFrame") -> "DataFrame":
    """(user_id, new): each user's new events as event structs, with their context (for the quarantine)."""
    from pyspark.sql import functions as F

    return new_events.groupBy("user_id").agg(
        F.collect_list(F.struct(ev_struct().alias("ev"), *[F.col(c) for c in CONTEXT])).alias("new")
    )


def merge_state(previous: "DataFrame", new: "DataFrame", max_len: int) -> "DataFrame":
    """Merge each user's new events (`group_new_events`) into the user's previous sequence.

    ``previous``: sequence-contract rows, at most one per user (the current rows of the active users,
    or any superset). Returns one row per user of ``new``: ``user_id``, ``events`` (the merged last N
    as event structs), ``fresh`` (new events added), ``known`` (the user had a previous sequence) and
    ``repeats`` (new events already in the old sequence, with their context, for the quarantine).
    The active users are the rows with ``fresh > 0``.
    """
    from pyspark.sql import functions as F

    old = previous.select("user_id", sequence_events(previous).alias("old"))
    joined = new.join(old, "user_id", "left").select(
        "user_id", "new", F.col("old").isNotNull().alias("known"),
        F.coalesce(F.col("old"), F.array().cast(f"array<{EV_TYPE}>")).alias("old"),
    )
    seen = lambda x: F.exists(F.col("old"), lambda o: o.eqNullSafe(x.getField("ev")))  # noqa: E731
    fresh = F.transform(F.filter(F.col("new"), lambda x: ~seen(x)), lambda x: x.getField("ev"))
    return joined.select(
        "user_id",
        last_n(F.concat(F.col("old"), fresh), max_len).alias("events"),
        F.size(fresh).alias("fresh"),
        "known",
        F.filter(F.col("new"), seen).alias("repeats"),
    )


def repeat_rows(merged: "DataFrame") -> "DataFrame":
    """The ``repeats`` of `merge_state` as event rows (user_id, event columns, context)."""
    from pyspark.sql import functions as F

    r = merged.select("user_id", F.explode("repeats").alias("r"))
    return r.select(
        "user_id", *[F.col("r.ev").getField(c).alias(c) for c in EV_FIELDS], *[F.col(f"r.{c}").alias(c) for c in CONTEXT]
    )
