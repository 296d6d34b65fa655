"""Last-N sequences in Spark: build them from events, and merge new events into a state.

An event inside a sequence is a struct ``ev = (ts, event_type, item_id, category_id, advertiser_id,
campaign_id)``. Field order is the sort order: sorting the structs ascending orders a user's events
oldest -> newest by ``ts``, and ties on ``ts`` are broken by the remaining fields, so the order (and
which events survive the cut to N) is deterministic and independent of partitioning. The sequence
contract stores the same thing column-wise: one list per field, oldest -> newest.

Two ways to a state:

* `build_state` (bootstrap, full rebuild): group all valid events by user, ``array_sort``,
  keep the last N. One shuffle of the whole history.
* `merge_state` (the hourly update): only the interval's new events are shuffled. The previous
  state is read twice, map-only, against the broadcast set of active user ids: a semi join picks
  the active users' old rows, an anti join passes every other row through untouched (only
  ``as_of`` changes). New events already present in a user's old sequence are duplicates; the
  rest are merged, sorted and cut to N. Cost: shuffle/sort work ~ new events + active users; the
  untouched state is streamed through once, never shuffled or sorted.
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


def merge_state(
    previous: "DataFrame", new_events: "DataFrame", as_of: datetime, max_len: int, broadcast_ids: bool = True
) -> tuple["DataFrame", "DataFrame"]:
    """Merge new (deduplicated) events into the previous state.

    Returns ``(untouched, merged)``:

    * ``untouched``: the previous rows of users without new events, ``as_of`` updated (contract columns);
    * ``merged``: one row per user with new events: ``user_id``, ``events`` (the merged last N as an
      array of event structs), ``fresh`` (how many new events were added) and ``repeats`` (the new
      events already in the old sequence, with their context, for the quarantine).

    The new state is ``untouched`` + ``to_sequence(merged)``; the active users are the merged rows with
    ``fresh > 0``.
    """
    from pyspark.sql import functions as F

    new = new_events.groupBy("user_id").agg(
        F.collect_list(F.struct(ev_struct().alias("ev"), *[F.col(c) for c in CONTEXT])).alias("new")
    )
    ids = new.select("user_id")
    ids = F.broadcast(ids) if broadcast_ids else ids
    untouched = previous.join(ids, "user_id", "left_anti").withColumn("as_of", F.lit(as_of).cast("timestamp"))
    old = previous.join(ids, "user_id", "left_semi").select("user_id", sequence_events(previous).alias("old"))
    joined = new.join(old, "user_id", "left").withColumn(
        "old", F.coalesce(F.col("old"), F.array().cast(f"array<{EV_TYPE}>"))
    )
    seen = lambda x: F.exists(F.col("old"), lambda o: o.eqNullSafe(x.getField("ev")))  # noqa: E731
    fresh = F.transform(F.filter(F.col("new"), lambda x: ~seen(x)), lambda x: x.getField("ev"))
    merged = joined.select(
        "user_id",
        last_n(F.concat(F.col("old"), fresh), max_len).alias("events"),
        F.size(fresh).alias("fresh"),
        F.filter(F.col("new"), seen).alias("repeats"),
    )
    return untouched.select(*SEQUENCE_COLUMNS), merged


def repeat_rows(merged: "DataFrame") -> "DataFrame":
    """The ``repeats`` of `merge_state` as event rows (user_id, event columns, context)."""
    from pyspark.sql import functions as F

    r = merged.select("user_id", F.explode("repeats").alias("r"))
    return r.select(
        "user_id", *[F.col("r.ev").getField(c).alias(c) for c in EV_FIELDS], *[F.col(f"r.{c}").alias(c) for c in CONTEXT]
    )
