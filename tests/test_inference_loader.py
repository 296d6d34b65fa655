"""The loader thread: order kept, producer errors re-raised in the consumer, early stop ends the producer."""

from __future__ import annotations

import threading
import time

import pytest

from encoder.inference.loader import prefetch


def test_prefetch_yields_everything_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_is_raised_in_the_consumer():
    def items():
        yield 1
        raise ValueError("corrupt parquet page")

    got = []
    with pytest.raises(ValueError, match="corrupt parquet page"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1]


def test_consumer_stopping_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    stream.close()  # e.g. the model raised
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before and len(produced) < 100
