"""A vectorised, deterministic generator of ad/recommendation event logs with planted structure.

What it plants, so that later stages can be measured against a known truth:

* **Items** have Zipf popularity and belong to one of ``n_clusters`` latent interest clusters. Each
  cluster owns ``categories_per_cluster`` categories; advertisers sell within one category;
  campaigns belong to an advertiser.
* **Users** have 1-3 interest clusters (the first is primary), heavy-tailed (log-normal) activity and
  bursty sessions: session starts follow a diurnal curve, gaps inside a session are log-normal
  seconds to minutes. Each interest draw picks one of the user's clusters by weight, independently
  of time by default; with ``session_focus`` > 0 that share of the draws takes the session's own
  interest instead (one pick per session), so a session stays on one topic, as real sessions do.
* **A funnel**: an impression (ads are targeted imperfectly: ``impression_interest_prob`` of them
  come from the user's clusters) may lead to a click a few seconds later (CTR ``ctr_interest`` on
  interesting items, ``ctr_other`` otherwise, about 2-5 % overall) and a click to a conversion
  (``cvr``). Views and searches come on top and follow the user's interests closely.
* **Late arrivals**: ``late_fraction`` of events land in a later hour's partition than their ``ts``.
* **Malformed rows** (optional, ``malformed_fraction``) of every kind the validator knows; their
  counts per kind go to the manifest.

Output: ``events/dt=.../hour=.../part-00000.parquet`` per arrival hour (the event contract), each
partition published with a ``_SUCCESS`` marker, and the planted truth in ``ground_truth/``:
``users.parquet`` (user -> clusters), ``items.parquet`` (item -> cluster, category, advertiser,
popularity rank) and ``manifest.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import publish_dir, write_json_atomic
from core.contracts import EVENT
from core.layout import HOUR_MS, Layout, utc

EVENT_TYPES = ("impression", "click", "conversion", "view", "search")
DEVICES = ("ios", "android", "web", "ctv")
COUNTRIES = ("US", "BR", "DE", "IN", "JP", "FR", "GB", "MX")
USER_ID_BASE = 10_000_000  # user ids are USER_ID_BASE + index
ITEM_ID_BASE = 5_000_000_000  # item ids are ITEM_ID_BASE + index: 64-bit, like real catalogues
MALFORMED_KINDS = (
    "null_user_id",
    "negative_user_id",
    "null_ts",
    "unknown_event_type",
    "null_item_id",
    "absurd_value:category_id",
    "ts_after_interval",
    "ts_before_lateness_window",
    "duplicate",
)


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 10_000  # users in the log
    n_items: int = 50_000  # items/ads in the catalogue
    n_clusters: int = 20  # latent interest clusters (the planted truth)
    categories_per_cluster: int = 5  # categories owned by each cluster
    advertisers_per_category: int = 20  # advertisers selling in each category
    campaigns_per_advertiser: int = 4  # campaigns of each advertiser
    start: str = "2026-01-01T00:00:00Z"  # first hour of the log
    hours: int = 24  # hours covered by event time
    base_events_per_user: float = 60.0  # mean impressions+views+searches per user over the whole log
    activity_sigma: float = 1.2  # log-normal sigma of per-user activity (heavy tail)
    zipf_a: float = 1.05  # Zipf exponent of item popularity
    impression_interest_prob: float = 0.55  # share of impressions drawn from the user's clusters
    organic_interest_prob: float = 0.9  # share of views/searches drawn from the user's clusters
    ctr_interest: float = 0.06  # click-through rate on impressions of interesting items
    ctr_other: float = 0.008  # click-through rate on other impressions
    cvr: float = 0.08  # conversions per click
    view_share: float = 0.2  # share of base events that are views
    search_share: float = 0.05  # share of base events that are searches
    mean_session_events: float = 12.0  # mean base events per session
    session_focus: float = 0.0  # share of interest draws that take the session's one interest (0 = none)
    late_fraction: float = 0.01  # events that arrive 1-3 hours after their ts
    malformed_fraction: float = 0.0  # share of extra malformed rows injected
    seed: int = 0  # everything derives from this
    user_offset: int = 0  # first user index: a slice of a bigger population (same catalogue, own users)


@dataclass
class GeneratedLog:
    """The generated log in memory (columns follow the event contract) plus its planted truth."""

    events: pa.Table  # event contract, plus nothing else; malformed rows included when asked
    arrival_hour: np.ndarray  # int64 epoch hour of the partition each row lands in
    users: pa.Table  # user_id, clusters (list<int32>), primary_cluster
    items: pa.Table  # item_id, cluster, category_id, advertiser_id, popularity_rank
    manifest: dict


def _inverse_cdf_table(weights: np.ndarray, size: int) -> np.ndarray:
    """A lookup table ``t`` with ``t[floor(u * size)]`` ~ a draw with probability ``weights``.

    O(1) per draw instead of a binary search; the discretisation error is below 1/size per item.
    """
    cum = np.cumsum(weights) / weights.sum()
    return np.minimum(np.searchsorted(cum, (np.arange(size) + 0.5) / size), len(weights) - 1)


def _cluster_sampler(item_cluster: np.ndarray, weights: np.ndarray, n_clusters: int):
    """Vectorised popularity-weighted draw of an item from a given cluster, one per event."""
    size = int(min(2**16, 2**24 // max(1, n_clusters)))
    tables = np.zeros((n_clusters, size), dtype=np.int64)
    for c in range(n_clusters):
        members = np.flatnonzero(item_cluster == c)
        if len(members):
            tables[c] = members[_inverse_cdf_table(weights[members], size)]

    def sample(clusters: np.ndarray, u: np.ndarray) -> np.ndarray:
        return tables[clusters, (u * size).astype(np.int64)]

    return sample


def generate(cfg: SyntheticConfig) -> GeneratedLog:
    """Generate the whole log in memory. Deterministic for a given config (seed included)."""
    rng = np.random.default_rng(cfg.seed)
    n_cat = cfg.n_clusters * cfg.categories_per_cluster

    # 1. Catalogue: Zipf popularity, cluster -> category -> advertiser -> campaign.
    item_cluster = rng.integers(0, cfg.n_clusters, cfg.n_items)
    rank = rng.permutation(cfg.n_items)
    popularity = 1.0 / np.power(rank + 1.0, cfg.zipf_a)
    item_category = item_cluster * cfg.categories_per_cluster + rng.integers(
        0, cfg.categories_per_cluster, cfg.n_items
    )
    item_advertiser = item_category * cfg.advertisers_per_category + rng.integers(
        0, cfg.advertisers_per_category, cfg.n_items
    )
    item_campaign = item_advertiser * cfg.campaigns_per_advertiser + rng.integers(
        0, cfg.campaigns_per_advertiser, cfg.n_items
    )
    from_cluster = _cluster_sampler(item_cluster, popularity, cfg.n_clusters)
    global_table = _inverse_cdf_table(popularity, 2**20)

    # 2. Users: 1-3 interest clusters (distinct), weights favour the primary one; heavy-tailed activity.
    U = cfg.n_users
    if cfg.user_offset:  # a slice: its users (and their events) depend on (seed, offset), not on other slices
        rng = np.random.default_rng([cfg.seed, cfg.user_offset])
    first_user = USER_ID_BASE + cfg.user_offset
    n_interests = rng.choice([1, 2, 3], size=U, p=[0.5, 0.3, 0.2])
    user_clusters = np.argsort(rng.random((U, cfg.n_clusters)), axis=1)[:, :3]  # 3 distinct clusters
    raw_w = np.array([0.6, 0.25, 0.15])[None, :] * (np.arange(3)[None, :] < n_interests[:, None])
    interest_cum = np.cumsum(raw_w / raw_w.sum(axis=1, keepdims=True), axis=1)
    mu = np.log(cfg.base_events_per_user) - cfg.activity_sigma**2 / 2
    counts = np.maximum(1, rng.lognormal(mu, cfg.activity_sigma, U).round().astype(np.int64))
    E = int(counts.sum())

    # 3. Base events: user, session structure and time.
    user = np.repeat(np.arange(U), counts)  # (E,)
    first = np.zeros(E, dtype=bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    new_session = first | (rng.random(E) < 1.0 / cfg.mean_session_events)
    session = np.cumsum(new_session) - 1
    n_sessions = int(session[-1]) + 1
    span_s = cfg.hours * 3600
    hour_of_day = (np.arange(cfg.hours) + utc(cfg.start).hour) % 24
    diurnal = 1.0 + 0.6 * np.sin((hour_of_day - 8) / 24 * 2 * np.pi)  # evening peak
    session_hour = rng.choice(cfg.hours, size=n_sessions, p=diurnal / diurnal.sum())
    session_start = session_hour * 3600 + rng.random(n_sessions) * 3600
    gaps = rng.lognormal(np.log(20.0), 1.0, E)  # seconds between events of a session
    gaps[new_session] = 0.0
    cum = np.cumsum(gaps)
    offset = cum - np.maximum.accumulate(np.where(new_session, cum, 0.0))
    t_s = session_start[session] + offset  # may run past the end: such rows are dropped below

    kind = rng.random(E)
    is_view = kind < cfg.view_share
    is_search = (kind >= cfg.view_share) & (kind < cfg.view_share + cfg.search_share)
    is_imp = ~(is_view | is_search)
    interest_prob = np.where(is_imp, cfg.impression_interest_prob, cfg.organic_interest_prob)
    from_interest = rng.random(E) < interest_prob

    def pick_interest(users: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(n,) users, (n,) uniforms -> (n,) index of one of each user's interests, drawn by weight."""
        return (u[:, None] < interest_cum[users]).argmax(axis=1)

    pick = pick_interest(user, rng.random(E))
    if cfg.session_focus > 0:  # own stream: a log without session focus stays draw-for-draw the same
        srng = np.random.default_rng([cfg.seed, cfg.user_offset, 1])
        session_pick = pick_interest(user[new_session], srng.random(n_sessions))  # (n_sessions,)
        pick = np.where(srng.random(E) < cfg.session_focus, session_pick[session], pick)
    chosen_cluster = user_clusters[user, pick]
    item = np.where(
        from_interest,
        from_cluster(chosen_cluster, rng.random(E)),
        global_table[(rng.random(E) * len(global_table)).astype(np.int64)],
    )
    interesting = (item_cluster[item][:, None] == user_clusters[user]) & (
        np.arange(3)[None, :] < n_interests[user][:, None]
    )
    interesting = interesting.any(axis=1)

    # 4. Funnel: impression -> click (a few seconds later) -> conversion (minutes later).
    ctr = np.where(interesting, cfg.ctr_interest, cfg.ctr_other)
    clicked = is_imp & (rng.random(E) < ctr)
    converted = clicked & (rng.random(E) < cfg.cvr)
    c_idx, v_idx = np.flatnonzero(clicked), np.flatnonzero(converted)
    click_t = t_s[c_idx] + rng.lognormal(np.log(5.0), 0.5, len(c_idx))
    conv_t = t_s[v_idx] + rng.lognormal(np.log(180.0), 0.8, len(v_idx))
    base_type = np.where(is_view, 3, np.where(is_search, 4, 0))
    src = np.concatenate([np.arange(E), c_idx, v_idx])  # base event each row derives from
    etype = np.concatenate([base_type, np.full(len(c_idx), 1), np.full(len(v_idx), 2)]).astype(np.int8)
    t_all = np.concatenate([t_s, click_t, conv_t])
    inside = t_all < span_s  # sessions that run past the end of the log are cut there
    src, etype, t_all = src[inside], etype[inside], t_all[inside]
    N = len(src)

    start_ms = int(utc(cfg.start).timestamp() * 1000)
    ts_ms = start_ms + (t_all * 1000).astype(np.int64)
    u_of = user[src]
    it_of = item[src]
    device = rng.integers(0, len(DEVICES), U)[u_of].astype(np.int8)  # a user's main device
    country = rng.integers(0, len(COUNTRIES), U)[u_of].astype(np.int8)

    # 5. Arrival partition: the event's own hour, or 1-3 hours later for late arrivals.
    event_hour = ts_ms // HOUR_MS
    last_hour = start_ms // HOUR_MS + cfg.hours - 1
    lag = np.where(rng.random(N) < cfg.late_fraction, rng.integers(1, 4, N), 0)
    arrival = np.minimum(event_hour + lag, last_hour)

    columns = {
        "user_id": pa.array(first_user + u_of, pa.int64()),
        "ts": pa.array(ts_ms, pa.int64()).cast(EVENT.schema.field("ts").type),
        "event_type": pa.DictionaryArray.from_arrays(pa.array(etype), pa.array(EVENT_TYPES)).cast(
            pa.string()
        ),
        "item_id": pa.array(ITEM_ID_BASE + it_of, pa.int64()),
        "category_id": pa.array(item_category[it_of], pa.int64()),
        "advertiser_id": pa.array(item_advertiser[it_of], pa.int64()),
        "campaign_id": pa.array(item_campaign[it_of], pa.int64()),
        "device": pa.DictionaryArray.from_arrays(pa.array(device), pa.array(DEVICES)).cast(pa.string()),
        "country": pa.DictionaryArray.from_arrays(pa.array(country), pa.array(COUNTRIES)).cast(pa.string()),
    }
    events = pa.Table.from_arrays([columns[f.name] for f in EVENT.schema], schema=EVENT.schema)

    injected: dict[str, int] = {}
    if cfg.malformed_fraction > 0:
        events, arrival, injected = _inject_malformed(events, arrival, cfg, rng)

    users = pa.table(
        {
            "user_id": pa.array(first_user + np.arange(U), pa.int64()),
            "clusters": pa.array(
                [row[:k].tolist() for row, k in zip(user_clusters, n_interests)], pa.list_(pa.int32())
            ),
            "primary_cluster": pa.array(user_clusters[:, 0], pa.int32()),
        }
    )
    items = pa.table(
        {
            "item_id": pa.array(ITEM_ID_BASE + np.arange(cfg.n_items), pa.int64()),
            "cluster": pa.array(item_cluster, pa.int32()),
            "category_id": pa.array(item_category, pa.int64()),
            "advertiser_id": pa.array(item_advertiser, pa.int64()),
            "popularity_rank": pa.array(rank, pa.int64()),
        }
    )
    type_counts = np.bincount(etype, minlength=len(EVENT_TYPES))
    manifest = {
        "config": asdict(cfg),
        "n_events": int(events.num_rows),
        "n_valid_events": int(N),
        "n_categories": int(n_cat),
        "event_type_counts": {t: int(c) for t, c in zip(EVENT_TYPES, type_counts)},
        "ctr": float(type_counts[1] / max(1, type_counts[0])),
        "cvr": float(type_counts[2] / max(1, type_counts[1])),
        "malformed_injected": injected,
    }
    return GeneratedLog(events=events, arrival_hour=arrival, users=users, items=items, manifest=manifest)


def _inject_malformed(events: pa.Table, arrival: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator):
    """Append corrupted copies of random rows, an equal share of each kind in MALFORMED_KINDS."""
    n_bad = int(round(events.num_rows * cfg.malformed_fraction))
    kinds = np.arange(n_bad) % len(MALFORMED_KINDS)
    src = rng.integers(0, events.num_rows, n_bad)
    bad = events.take(pa.array(src)).to_pydict()
    end_ms = int((utc(cfg.start) + timedelta(hours=cfg.hours)).timestamp() * 1000)
    for row, k in enumerate(kinds):
        name = MALFORMED_KINDS[k]
        if name == "null_user_id":
            bad["user_id"][row] = None
        elif name == "negative_user_id":
            bad["user_id"][row] = -bad["user_id"][row]
        elif name == "null_ts":
            bad["ts"][row] = None
        elif name == "unknown_event_type":
            bad["event_type"][row] = "hover"
        elif name == "null_item_id":
            bad["item_id"][row] = None
        elif name == "absurd_value:category_id":
            bad["category_id"][row] = -7
        elif name == "ts_after_interval":  # a clock-skewed device: a day past the end of the log
            bad["ts"][row] = datetime.fromtimestamp((end_ms + 86_400_000) / 1000, tz=utc(cfg.start).tzinfo)
        elif name == "ts_before_lateness_window":
            bad["ts"][row] = datetime.fromtimestamp(
                (end_ms - 400 * 86_400_000) / 1000, tz=utc(cfg.start).tzinfo
            )
        # "duplicate": the row is left as an exact copy of its source
    bad_table = pa.Table.from_pydict(bad, schema=pa.schema([f.with_nullable(True) for f in EVENT.schema]))
    merged = pa.concat_tables([events.cast(bad_table.schema), bad_table])
    counts = {
        MALFORMED_KINDS[k]: int(c) for k, c in enumerate(np.bincount(kinds, minlength=len(MALFORMED_KINDS)))
    }
    return merged, np.concatenate([arrival, arrival[src]]), counts


def write_log(log: GeneratedLog, layout: Layout, progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write one Parquet file per arrival hour (each published atomically) and the planted truth."""
    order = np.argsort(log.arrival_hour, kind="stable")
    hours_sorted = log.arrival_hour[order]
    bounds = np.flatnonzero(np.diff(hours_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    events = log.events.take(pa.array(order))  # one gather; each hour is then a zero-copy slice
    written = []
    for s, e in zip(starts, ends):
        hour = datetime.fromtimestamp(int(hours_sorted[s]) * 3600, tz=utc("2000-01-01").tzinfo)
        part = events.slice(int(s), int(e - s))
        with publish_dir(layout.event_partition(hour), {"rows": int(e - s), "contract": "event/1"}) as tmp:
            pq.write_table(part, tmp / "part-00000.parquet", compression="snappy")
        written.append(layout.event_partition(hour))
        if progress:
            progress(int(e - s))
    gt = layout.ground_truth
    gt.mkdir(parents=True, exist_ok=True)
    pq.write_table(log.users, gt / "users.parquet")
    pq.write_table(log.items, gt / "items.parquet")
    write_json_atomic(gt / "manifest.json", log.manifest)
    return written
