"""Exact peak memory of the graph build, per step: an incremental hour and/or a full build.

    python -m bench.graph_memory [--quick] [--mode inc|full|both] [--moved N] [--threads 1]

The world is `bench.world`'s cached previous generation (built once under ``--data-dir``): 1M known
users (the ``all-active`` shape) by default, 100k (``quick``). A run works on its own hard-linked copy
of the world's embeddings, graph and models:

* ``inc``: ``--moved`` users (default 10 % of the known users) get the previous vectors plus Gaussian
  noise (``--noise``) as the next hour's embedding snapshot; `store.graph.build.build_graph` at T0 + 1h
  then updates the previous graph incrementally. The previous snapshot's neighbours file is first
  rewritten in row groups of ``graph.chunk_rows`` when it has fewer (worlds cached before the chunked
  writer), so the build reads what the current writer leaves.
* ``full``: the previous graph removed; `build_graph` at T0 builds from scratch.
* ``both``: each mode in its own child process (a second build in the same process would reuse pages
  the first one left resident and look smaller).

Exact peaks, not sampled ones: Linux's VmHWM (the process's peak resident memory), reset through
``/proc/self/clear_refs`` at every step boundary and folded into every open step, so nested steps
are exact too. The steps are functions of ``store.graph`` wrapped for the run only (`instrumented`,
inside `main`; restored afterwards). Per step: calls, seconds, the largest rise of one call over the
RSS at its start, and its peak over the build's start. The baseline beside them: the bytes of the
(N, D) float32 vectors themselves, and the build's peak per user. Beside the measured peak, the
build's own estimate of it (``estimate_mb``: `store.graph.memory`, the figure ``graph.memory_budget_mb``
is checked against) and their ratio.

faiss, BLAS and torch run on ``--threads`` threads (1 by default: the machine is shared).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.common import emit, machine, parse_args

MB = 2**20
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# -- exact peaks ------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise KeyError(key)


def rss_mb() -> float:
    return _status_mb("VmRSS:")


def reset_peak() -> None:
    """Set VmHWM back to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PeakMeter:
    """Peak RSS per wrapped call. Each call records the RSS at its start and the VmHWM reached
    before it returns; the high-water mark is reset at every call boundary and, before that, folded
    into every call still open, so an outer step's peak includes its inner steps' peaks."""

    def __init__(self) -> None:
        self.stack: list[dict] = []
        self.rows: list[dict] = []

    def _fold(self) -> None:
        peak = _status_mb("VmHWM:")
        for frame in self.stack:
            frame["peak"] = max(frame["peak"], peak)

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def measured(*args, **kwargs):
            self._fold()
            before = rss_mb()
            frame = {"name": name, "depth": len(self.stack), "before": before, "peak": before}
            self.stack.append(frame)
            self.rows.append(frame)
            reset_peak()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._fold()
                self.stack.pop()
                frame["after"] = rss_mb()
                frame["s"] = time.perf_counter() - t0
                reset_peak()

        return measured

    def steps(self, start: float) -> dict[str, dict]:
        """Per step name (first call's order): calls, seconds, the largest rise of one call over its
        own start (MB), and the step's peak over ``start`` (the build's starting RSS, MB)."""
        out: dict[str, dict] = {}
        for r in self.rows:
            s = out.setdefault(
                r["name"],
                {"depth": r["depth"], "calls": 0, "s": 0.0, "peak_rise_mb": 0.0, "peak_above_start_mb": 0.0},
            )
            s["calls"] += 1
            s["s"] += r.get("s", 0.0)
            s["peak_rise_mb"] = max(s["peak_rise_mb"], r["peak"] - r["before"])
            s["peak_above_start_mb"] = max(s["peak_above_start_mb"], r["peak"] - start)
        for s in out.values():
            for key in ("s", "peak_rise_mb", "peak_above_start_mb"):
                s[key] = round(s[key], 1)
        return out


@contextmanager
def patched(targets: list[tuple[Any, str, Callable[[Any], Any]]]) -> Iterator[None]:
    """Set ``owner.attr = make(original)`` for each target (the owner's own __dict__ entry, so a
    cached_property is replaced as a descriptor); put every original back on exit."""
    saved = []
    try:
        for owner, attr, make in targets:
            original = vars(owner)[attr] if isinstance(owner, type) else getattr(owner, attr)
            saved.append((owner, attr, original))
            setattr(owner, attr, make(original))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def _measured_cached_property(meter: PeakMeter, name: str):
    def make(original: cached_property) -> cached_property:
        prop = cached_property(meter.wrap(name, original.func))
        prop.__set_name__(None, original.attrname)
        return prop

    return make


@contextmanager
def instrumented(meter: PeakMeter) -> Iterator[None]:
    """The graph build's steps measured by ``meter`` while inside (names as they are called in
    ``store.graph.build`` and ``store.graph.snapshot``)."""
    import store.graph.build as build
    import store.graph.snapshot as snapshot
    import store.graph.vectors as vectors

    def step(name: str) -> Callable[[Callable], Callable]:
        return lambda fn: meter.wrap(name, fn)

    build_steps = (
        "latest_snapshot",
        "newer_window",
        "window_vectors",
        "build_incremental",
        "build_full",
        "build_index",
        "update_index",
        "carry_over",
        "fresh_exact",
        "carry_exact",
        "calibrate",
        "search_into",
        "search_neighbours",
        "rescore",
        "thin",
        "reverse_search",
        "local_neighbours",
        "repair_untouched",
        "changed_lists",
        "measured_recall",
        "write_snapshot",
    )
    targets: list[tuple[Any, str, Callable]] = [(build, n, step(n)) for n in build_steps if hasattr(build, n)]
    targets += [(snapshot, n, step(n)) for n in ("neighbours_table", "save_index")]
    targets += [
        (snapshot.GraphSnapshot, n, step(f"snap.{n}")) for n in ("index", "neighbours", "next_scores")
    ]
    targets.append((snapshot.GraphSnapshot, "vectors", _measured_cached_property(meter, "snap.vectors")))
    targets.append((vectors.UserVectors, "merged", step("uv.merged")))
    targets.append((vectors.WindowVectors, "load", step("window.load")))
    with patched(targets):
        yield


# -- the run's data ---------------------------------------------------------------------------------
def pin_threads(n: int) -> None:
    """faiss, BLAS and torch on ``n`` threads (the variables also reach libraries loaded later)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    import faiss

    faiss.omp_set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def regroup(path: Path, rows: int) -> bool:
    """Rewrite a neighbours file in row groups of ``rows`` (as `write_snapshot` lays it out) when it
    has fewer; the file is replaced, not written through (it is a hard link to the cache)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    if meta.num_row_groups >= -(-meta.num_rows // rows):
        return False
    table = pq.read_table(path)
    path.unlink()
    with pq.ParquetWriter(path, table.schema) as writer:
        for lo in range(0, table.num_rows, rows):
            writer.write_table(table.slice(lo, rows), row_group_size=rows)
    return True


def prepare_root(world, root: Path, mode: str, moved: int, noise: float, s) -> dict:
    """The run's data root (hard links into the world) and, for ``inc``, the next hour's snapshot.

    ``inc`` with ``graph.spare_neighbours`` (e.g. ``SOE_GRAPH__SPARE_NEIGHBOURS=10``) other than the
    world's graph's: the previous graph is first rebuilt in full with it (not measured), so the hour
    updates lists of the width it would in production, not the first hour after the setting changed."""
    import numpy as np

    from bench.world import T0
    from core.layout import HOUR, Layout
    from store.graph.planted import write_embeddings
    from store.graph.snapshot import NEIGHBOURS_FILE, latest_snapshot

    for sub in ("graph", "embeddings", "models"):
        shutil.copytree(world.data / sub, root / sub, copy_function=os.link)
    if mode == "full":
        shutil.rmtree(root / "graph")
        return {"as_of": T0}
    snap = latest_snapshot(Layout(root), world.model)
    assert snap is not None
    rebuilt = None
    if snap.spare != s.graph.spare_neighbours:
        from store.graph.build import build_graph

        t0 = time.perf_counter()
        shutil.rmtree(root / "graph")
        build_graph(s.graph, s.redis, Layout(root), world.model, T0, incremental=False, publish_redis=False)
        rebuilt = round(time.perf_counter() - t0, 1)
        print(f"previous graph rebuilt with spare_neighbours={s.graph.spare_neighbours} in {rebuilt} s")
        snap = latest_snapshot(Layout(root), world.model)
        assert snap is not None
    regrouped = regroup(snap.path / NEIGHBOURS_FILE, s.graph.chunk_rows)
    uv = snap.vectors
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(uv), moved, replace=False))
    drift = uv.vectors[rows].astype(np.float32) + noise * rng.standard_normal((moved, uv.dim), np.float32)
    write_embeddings(Layout(root), world.model, T0 + HOUR, uv.ids[rows], drift)
    return {"as_of": T0 + HOUR, "regrouped": regrouped, "previous_rebuilt_s": rebuilt}


def measure(world, mode: str, moved: int, noise: float) -> dict:
    """One build of ``mode`` on a copy of ``world``, measured step by step."""
    import pyarrow as pa

    from bench.world import settings_for
    from store.graph.build import build_graph

    work = Path(tempfile.mkdtemp(prefix="soe-bench-graphmem-", dir=world.root.parent))
    try:
        s = settings_for(work)
        prep = prepare_root(world, work, mode, moved, noise, s)
        gc.collect()
        pa.default_memory_pool().release_unused()
        meter = PeakMeter()
        with instrumented(meter):
            build = meter.wrap("build_graph", build_graph)
            start = rss_mb()
            t0 = time.perf_counter()
            m = build(
                s.graph, s.redis, s.layout(), world.model, prep["as_of"], publish_redis=False, accept=False
            )
            seconds = time.perf_counter() - t0
        steps = meter.steps(start)
        peak = steps.pop("build_graph")["peak_above_start_mb"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n, dim = m["n_users"], m["dim"]
    vectors_mb = n * dim * 4 / MB
    table(meter.rows, start)
    return {
        "mode": mode,
        "build_mode": m["mode"],  # what build_graph did ("incremental" unless it fell back to full)
        "full_reason": m["full_reason"],
        "n_users": n,
        "dim": dim,
        "moved": moved if mode == "inc" else None,
        "regrouped": prep.get("regrouped"),
        "spare_neighbours": s.graph.spare_neighbours,
        "previous_rebuilt_s": prep.get("previous_rebuilt_s"),
        "index": m["index"],
        "start_rss_mb": round(start, 1),
        "peak_above_start_mb": peak,
        "seconds": round(seconds, 1),
        "recall_at_k": m["recall_at_k"],
        "n_touched": m.get("n_touched"),
        "n_researched": m.get("n_researched"),
        "n_thinned": m.get("n_thinned"),
        "mean_entries": m.get("mean_entries"),
        "search_s": m.get("search_s"),
        "n_changed_lists": m["n_changed_lists"],
        "vectors_mb": round(vectors_mb, 1),
        "peak_over_vectors": round(peak / vectors_mb, 2),
        "peak_bytes_per_user": round(peak * MB / n, 1),
        # the build's own estimate (store.graph.memory, before it read a vector) beside the measured peak
        "estimate_mb": m["memory"]["peak_mb"],
        "estimate_over_measured": round(m["memory"]["peak_mb"] / peak, 2),
        "estimate": m["memory"],
        "steps": steps,
    }


def table(rows: list[dict], start: float) -> None:
    """Every call, nested, with consecutive calls of one step folded into one line."""
    folded: list[dict] = []
    for r in rows:
        last = folded[-1] if folded else None
        if last and last["name"] == r["name"] and last["depth"] == r["depth"]:
            last["n"] += 1
            last["s"] += r["s"]
            last["peak"] = max(last["peak"], r["peak"])
            last["rise"] = max(last["rise"], r["peak"] - r["before"])
            last["after"] = r["after"]
        else:
            folded.append({**r, "n": 1, "rise": r["peak"] - r["before"]})
    print(f"RSS in MB; the build started at {start:.0f}")
    print(f"{'step':<38} {'s':>7} {'before':>7} {'peak':>7} {'after':>7} {'max rise':>8}")
    for r in folded:
        label = "  " * r["depth"] + r["name"] + (f" x{r['n']}" if r["n"] > 1 else "")
        print(
            f"{label:<38} {r['s']:>7.1f} {r['before']:>7.0f} {r['peak']:>7.0f} {r['after']:>7.0f}"
            f" {r['rise']:>8.0f}"
        )


def child(args, mode: str) -> dict:
    """``mode`` measured in a fresh process: its last line (the JSON result)."""
    cmd = [sys.executable, "-m", "bench.graph_memory", "--mode", mode, "--threads", str(args.threads)]
    cmd += ["--noise", str(args.noise), "--data-dir", str(args.data_dir)]
    cmd += (["--quick"] if args.quick else []) + ([f"--moved={args.moved}"] if args.moved is not None else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_args(
        "Exact peak RSS per step of the graph build (incremental hour, full build) on the bench world.",
        lambda p: (
            p.add_argument("--mode", choices=("inc", "full", "both"), default="both"),
            p.add_argument("--moved", type=int, default=None, help="inc: users moved (default 10 %% known)"),
            p.add_argument("--noise", type=float, default=0.05, help="inc: std of the moved users' drift"),
            p.add_argument("--threads", type=int, default=1, help="faiss / BLAS / torch threads"),
            p.add_argument("--data-dir", type=Path, default=Path("data/bench"), help="the world cache"),
        ),
    )
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench.graph_memory needs Linux (/proc/self/clear_refs resets the peak RSS)")
    pin_threads(args.threads)
    from bench.world import prepare_world, shape_for

    shape = shape_for("quick" if args.quick else "all-active")
    moved = args.moved if args.moved is not None else shape.known_users // 10
    result: dict[str, Any] = {"bench": "graph_memory", "quick": args.quick, "threads": args.threads}
    if args.mode == "both":
        runs = {mode: child(args, mode) for mode in ("inc", "full")}
        first = runs["inc"]
        result.update(
            modes=["inc", "full"],
            n_users=first["n_users"],
            vectors_mb=first["vectors_mb"],
            world=first["world"],
            model=first["model"],
            **{f"{mode}_peak_above_start_mb": r["peak_above_start_mb"] for mode, r in runs.items()},
            **{f"{mode}_peak_bytes_per_user": r["peak_bytes_per_user"] for mode, r in runs.items()},
            **{f"{mode}_estimate_mb": r["estimate_mb"] for mode, r in runs.items()},
            runs={mode: {k: v for k, v in r.items() if k not in machine()} for mode, r in runs.items()},
        )
    else:
        t0 = time.perf_counter()
        world = prepare_world(shape, args.data_dir)
        print(f"world {shape.label} ready in {time.perf_counter() - t0:.1f} s ({world.root})", flush=True)
        result.update(measure(world, args.mode, moved, args.noise), world=str(world.root), model=world.model)
    emit({**result, **machine()})


if __name__ == "__main__":
    main()
