"""bench.graph_memory's exact-peak meter: a step's known allocation is seen by it and by its caller."""

import sys
import types

import numpy as np
import pytest

from bench.graph_memory import PeakMeter, patched

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")

SIZE_MB = 64


def allocate() -> float:
    a = np.ones(SIZE_MB * 2**20 // 8)  # touched: resident, then freed before returning
    return float(a[-1])


def test_peak_of_a_step_and_its_caller_and_patching_is_undone():
    meter = PeakMeter()
    mod = types.SimpleNamespace(allocate=allocate)
    with patched([(mod, "allocate", lambda fn: meter.wrap("allocate", fn))]):
        assert mod.allocate is not allocate
        step = meter.wrap("outer", lambda: mod.allocate() + 1)
        assert step() == 2.0
    assert mod.allocate is allocate
    steps = meter.steps(start=meter.rows[0]["before"])
    inner = steps["allocate"]
    assert inner["calls"] == 1 and inner["depth"] == 1
    assert SIZE_MB * 0.95 <= inner["peak_rise_mb"] <= SIZE_MB * 1.1
    assert SIZE_MB * 0.95 <= steps["outer"]["peak_rise_mb"] <= SIZE_MB * 1.1  # folded into the caller
    assert meter.rows[1]["after"] - meter.rows[1]["before"] < SIZE_MB / 2  # freed: a peak, not a level
