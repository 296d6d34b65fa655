"""What every benchmark shares: argument parsing, median timing, the machine, the final JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI and a first look")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repetitions (the median is reported)"
    )
    if extra:
        extra(parser)
    return parser.parse_args()


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` + ``repeats`` times; return (median seconds, every timing)."""
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - t0)
    return statistics.median(timings), timings


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def emit(result: dict[str, Any]) -> None:
    """Print a readable summary, then the result as the last line: one JSON object."""
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            print(f"  {key:>32}: {value}")
    print(json.dumps(result, sort_keys=True, default=str), flush=True)


class StageMeter:
    """Peak RSS and core-seconds of this process and its children (Spark's JVM included), per stage.

    A thread samples the resident memory of the process tree every ``interval`` seconds; `mark()`
    closes the current stage: the peak RSS seen since the previous mark and the CPU seconds (user +
    system, all cores) spent since then. ``exclude`` holds pids measured apart (a redis-server the
    benchmark started is not part of any stage's footprint).
    """

    def __init__(self, exclude: tuple[int, ...] = (), interval: float = 0.1):
        import threading

        import psutil

        self._me, self._exclude, self._interval = psutil.Process(), set(exclude), interval
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU s last seen
        self._peak = self._rss()
        self._cpu = self._cpu_s()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="stage-meter")
        self._thread.start()

    def _tree(self):
        import psutil

        procs = [self._me]
        try:
            procs += [p for p in self._me.children(recursive=True) if p.pid not in self._exclude]
        except psutil.Error:
            pass
        return procs

    def _tree_sum(self, measure) -> float:
        """``measure(process)`` summed over the tree; a process that exited meanwhile counts 0."""
        import psutil

        total = 0.0
        for p in self._tree():
            try:
                total += measure(p)
            except psutil.Error:
                pass
        return total

    def _rss(self) -> float:
        return self._tree_sum(lambda p: p.memory_info().rss)

    def _cpu_s(self) -> float:
        """CPU seconds of this process and of every descendant seen so far, alive or exited: an exited
        one keeps the last time sampled (up to ``interval`` of its CPU lost). Summing only the live tree
        went negative when a child (a Spark worker, the JVM) exited inside a stage."""
        import psutil

        t = self._me.cpu_times()
        for p in self._tree()[1:]:
            try:
                with p.oneshot():
                    c = p.cpu_times()
                    key = (p.pid, p.create_time())  # a reused pid is another process
            except psutil.Error:
                continue
            with self._lock:
                self._seen[key] = max(self._seen.get(key, 0.0), c.user + c.system)
        with self._lock:
            return t.user + t.system + sum(self._seen.values())

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self._rss()
            self._cpu_s()  # keeps each descendant's last CPU time
            with self._lock:
                self._peak = max(self._peak, rss)

    def mark(self) -> dict[str, float]:
        """Close the stage that just ended: {"peak_rss_mb", "core_s"} since the previous mark."""
        rss, cpu = self._rss(), self._cpu_s()
        with self._lock:
            peak, self._peak = max(self._peak, rss), rss
        used, self._cpu = cpu - self._cpu, cpu
        return {"peak_rss_mb": round(peak / 2**20, 1), "core_s": round(used, 2)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
