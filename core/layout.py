"""Where everything lives under one data root, and how times are spelled in paths.

::

    <root>/events/dt=YYYY-MM-DD/hour=HH/part-*.parquet  + _SUCCESS   raw event log (arrival hour)
    <root>/quarantine/as_of=<T>/                                     rejected rows, with a reason
    <root>/state/as_of=<T>/layer=<T'>/                               every known user's last N events
    <root>/active/as_of=<T>/shard=<iiiii>.parquet                    active users of the interval, K shards
    <root>/trainsets/<name>/                                         training sets
    <root>/models/<version>/                                         model artifacts
    <root>/embeddings/<model>/as_of=<T>/shard=<i>/                   one vector per active user
    <root>/graph/<model>/as_of=<T>/                                  neighbours + FAISS index + manifest
    <root>/manifests/<dag>/as_of=<T>.json                            run manifests
    <root>/ground_truth/                                             the synthetic generator's planted truth

``<T>`` is an hour-aligned UTC time written ``YYYYMMDDTHHMMZ`` (sortable, no colons). Every
directory counts as published only when it holds a ``_SUCCESS`` marker (see core.atomic).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.atomic import is_complete
from core.names import check_name

HOUR = timedelta(hours=1)
HOUR_MS = 3_600_000  # one hour in epoch milliseconds (the unit of every ts column)
DAY_MS = 24 * HOUR_MS
_STAMP = "%Y%m%dT%H%MZ"


def utc(value: datetime | str) -> datetime:
    """Parse/normalise to an aware UTC datetime. Naive datetimes and strings without zone are UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.strptime(text, _STAMP)
        except ValueError:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def epoch_ms(t) -> int:
    """A time (aware or naive-UTC datetime, ISO string, or already epoch ms) -> epoch milliseconds (int)."""
    if isinstance(t, numbers.Integral):  # int, numpy integers
        return int(t)
    return round(utc(t).timestamp() * 1000)


def stamp(t: datetime) -> str:
    """The path spelling of a time: ``20260101T0500Z``."""
    return utc(t).strftime(_STAMP)


def floor_hour(t: datetime) -> datetime:
    return utc(t).replace(minute=0, second=0, microsecond=0)


def hours(start: datetime, end: datetime) -> list[datetime]:
    """The hour starts in [start, end)."""
    t, end = floor_hour(start), utc(end)
    out = []
    while t < end:
        out.append(t)
        t += HOUR
    return out


def check_interval(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """UTC, hour-aligned, non-empty: the only data intervals the hourly partitions can answer."""
    start, end = utc(start), utc(end)
    if floor_hour(start) != start or floor_hour(end) != end:
        raise ValueError(
            f"interval {start.isoformat()}/{end.isoformat()} must start and end on whole hours (UTC)"
        )
    if end <= start:
        raise ValueError(f"interval {start.isoformat()}/{end.isoformat()}: END must be after START")
    return start, end


def parse_interval(text: str) -> tuple[datetime, datetime]:
    """``START/END`` (ISO 8601) -> (start, end), both UTC; END must be after START."""
    try:
        start_s, end_s = text.split("/")
        start, end = utc(start_s), utc(end_s)
    except ValueError as exc:
        raise ValueError(
            f"interval {text!r} must be START/END in ISO 8601, e.g. 2026-01-01T00:00Z/2026-01-01T01:00Z"
        ) from exc
    if end <= start:
        raise ValueError(f"interval {text!r}: END must be after START")
    return start, end


@dataclass(frozen=True)
class Layout:
    root: Path

    # -- raw events -------------------------------------------------------------------------
    @property
    def events(self) -> Path:
        return Path(self.root) / "events"

    def event_partition(self, hour: datetime) -> Path:
        h = floor_hour(hour)
        return self.events / f"dt={h:%Y-%m-%d}" / f"hour={h:%H}"

    # -- pipeline outputs ---------------------------------------------------------------------
    def quarantine(self, as_of: datetime) -> Path:
        return Path(self.root) / "quarantine" / f"as_of={stamp(as_of)}"

    @property
    def state_root(self) -> Path:
        return Path(self.root) / "state"

    def state(self, as_of: datetime) -> Path:
        return self.state_root / f"as_of={stamp(as_of)}"

    def active(self, as_of: datetime) -> Path:
        return Path(self.root) / "active" / f"as_of={stamp(as_of)}"

    def active_shard(self, as_of: datetime, shard: int) -> Path:
        """One of the K balanced shards of active users' sequences (sequence contract)."""
        return self.active(as_of) / f"shard={shard:05d}.parquet"

    def trainset(self, name: str) -> Path:
        return Path(self.root) / "trainsets" / check_name("training set name", name)

    # -- encoder ----------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return Path(self.root) / "models"

    def model(self, version: str) -> Path:
        return self.models / check_name("model version", version)

    def model_embeddings(self, model_version: str) -> Path:
        """Every embedding snapshot of one model."""
        return Path(self.root) / "embeddings" / check_name("model version", model_version)

    def embeddings(self, model_version: str, as_of: datetime) -> Path:
        return self.model_embeddings(model_version) / f"as_of={stamp(as_of)}"

    # -- graph / runs -----------------------------------------------------------------------
    def model_graphs(self, model_version: str) -> Path:
        """Every graph snapshot of one model."""
        return Path(self.root) / "graph" / check_name("model version", model_version)

    def graph(self, model_version: str, as_of: datetime) -> Path:
        return self.model_graphs(model_version) / f"as_of={stamp(as_of)}"

    def rejected(self, model_version: str, as_of: datetime) -> Path:
        """Where a rejected generation's outputs are moved (kept for inspection, never read by a stage)."""
        return (
            Path(self.root)
            / "rejected"
            / check_name("model version", model_version)
            / f"as_of={stamp(as_of)}"
        )

    def manifest(self, dag: str, as_of: datetime) -> Path:
        return Path(self.root) / "manifests" / check_name("run name", dag) / f"as_of={stamp(as_of)}.json"

    @property
    def ground_truth(self) -> Path:
        return Path(self.root) / "ground_truth"

    @property
    def cache(self) -> Path:
        return Path(self.root) / "cache"


def snapshot_times(parent: Path) -> list[datetime]:
    """The ``as_of=<T>`` children of ``parent`` that are published (hold _SUCCESS), oldest first."""
    if not parent.is_dir():
        return []
    out = []
    for child in parent.iterdir():
        if child.name.startswith("as_of=") and is_complete(child):
            out.append(utc(child.name[len("as_of=") :]))
    return sorted(out)
