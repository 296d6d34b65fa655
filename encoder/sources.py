"""Where training and evaluation data come from, all turned into sequence rows (see encoder.data).

* ``ml100k``: MovieLens-100K via `core.datasets.movielens` (cached under the data root).
* ``sasrec``: a SASRec text file (item ids only: no time, no event types).
* ``events``: the published event log under the data root (optionally one ``START/END`` interval);
  every partition is validated with `core.validation` and bad rows are left out.
* ``sequences``: a Parquet file/dir of sequence rows, e.g. a pipeline training set
  (``trainsets/<name>``) or a state snapshot.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from core.contracts import EVENT, TS
from core.datasets.events import validated_partitions
from core.datasets.movielens import load_ml100k_events
from core.layout import Layout, parse_interval
from core.settings import EventSettings
from encoder.data import events_to_sequences, read_sasrec, read_sequences


def _events_of_log(layout: Layout, events: EventSettings, interval: str | None) -> pa.Table:
    tables = [result.valid for _, result in validated_partitions(layout, events, interval)]
    events = pa.concat_tables(tables, promote_options="permissive")
    if interval:  # training windows are on event time
        start, end = parse_interval(interval)
        ts = events["ts"].cast(TS)
        events = events.filter(
            pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less(ts, pa.scalar(end, TS)))
        )
    return events


def load_source(
    layout: Layout,
    event_settings: EventSettings,
    *,
    ml100k: bool = False,
    sasrec_file: str | Path | None = None,
    events: bool = False,
    interval: str | None = None,
    sequences: str | Path | None = None,
) -> tuple[str, pa.Table]:
    """Exactly one source -> (a name for it, sequence rows). ``event_settings`` validates the event log."""
    chosen = [
        name
        for name, on in (
            ("ml100k", ml100k),
            ("sasrec", sasrec_file),
            ("events", events),
            ("sequences", sequences),
        )
        if on
    ]
    if len(chosen) != 1:
        raise ValueError(
            "choose exactly one data source: --ml100k, --sasrec-file PATH, --events [--interval S/E] or "
            "--sequences PATH"
        )
    if ml100k:
        return "ml-100k", events_to_sequences(load_ml100k_events(layout.cache))
    if sasrec_file:
        return f"sasrec:{Path(sasrec_file).name}", read_sasrec(sasrec_file)
    if events:
        table = _events_of_log(layout, event_settings, interval)
        return f"events:{interval or 'all'}", events_to_sequences(
            table.select([c for c in EVENT.schema.names if c in table.column_names])
        )
    path = Path(sequences)
    if not path.exists():
        candidate = layout.trainset(str(sequences))
        if not candidate.exists():
            raise FileNotFoundError(
                f"sequence rows {sequences} not found (neither a path nor a trainset under "
                f"{candidate.parent})"
            )
        path = candidate
    return f"sequences:{path.name}", read_sequences(path)
