"""Overlapping host work with compute: run an iterator in a background thread, ``depth`` items ahead.

`prefetch(items, depth)` is the engine's loader: on a GPU the Parquet reading, featurisation and
pinning of the next batches happen in this thread while the device computes the current batch
(numpy, pyarrow and torch release the GIL in their kernels). An exception in the background thread
is re-raised in the consumer, and a consumer that stops early (error, ``close()``) stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2, name: str = "soe-loader") -> Iterator[T]:
    """Yield ``items`` in order, produced by a daemon thread that stays up to ``depth`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(_Failed(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue see the stop flag
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
