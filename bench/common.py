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
