"""bench.common.StageMeter: the core-seconds of a stage count descendants that exited inside it."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import StageMeter

BURN = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.6: pass"


def test_a_grandchild_that_exits_inside_a_stage_keeps_its_cpu_seconds():
    """A shell (the child) runs a Python that burns 0.6 CPU s (the grandchild, as the JVM runs Spark's
    Python workers), then sleeps. Marked while it burns and again after it exited, the two stages share
    its 0.6 s: summing only the live tree lost the exited grandchild's time (the child reaped it into
    its own children's times, which nobody reads), and the second stage went negative."""
    meter = StageMeter(interval=0.02)
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{BURN}"; sleep 2'])
    try:
        meter.mark()
        time.sleep(0.35)  # the grandchild is burning
        burning = meter.mark()
        time.sleep(0.9)  # it has exited; the shell sleeps
        after = meter.mark()
    finally:
        shell.kill()
        shell.wait()
        meter.close()
    assert burning["core_s"] > 0.15, burning
    assert after["core_s"] > 0.1, after  # the old meter: about -0.3
    assert 0.45 <= burning["core_s"] + after["core_s"] <= 1.2, (burning, after)
