"""`soe report`: one self-contained HTML page per model and time range, checked as text and in headless
Chromium (Debian package ``chromium``): the DOM after rendering and a screenshot.

The runs come from tests/batch_runs.py: records written by the flows' own functions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.layout import HOUR, stamp
from soe.cli.app import app
from soe.report.page import write_report
from tests.batch_runs import MODEL, T0, write_history

HOURLY_CHARTS = (
    "stage-seconds",
    "throughput",
    "publish-throughput",
    "rows",
    "coverage",
    "drift",
    "norms",
    "bad-norms",
    "recall",
    "quarantine",
)
MODEL_CHARTS = ("train-loss", "train-valid", "baselines")
WINDOW = (1280, 3300)


class Charts(HTMLParser):
    """Per ``svg.chart``: its attributes and how many data-point elements (class ``pt``) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict] = {}
        self.current: str | None = None
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        if tag == "svg" and "chart" in (a.get("class") or "").split():
            self.current = a["data-chart"]
            self.charts[self.current] = {**a, "pt": 0, "xy": []}
        elif self.current and "pt" in (a.get("class") or "").split():
            self.charts[self.current]["pt"] += 1
            self.charts[self.current]["xy"].append((a.get("data-x"), float(a["data-y"])))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None


def charts(html: str) -> Charts:
    p = Charts()
    p.feed(html)
    return p


@pytest.fixture
def report(settings, tmp_path):
    history = write_history(settings)
    out = tmp_path / "report.html"
    summary = write_report(
        settings.layout(),
        MODEL,
        T0 - HOUR,
        history.hours[-1],
        out,
        norm_tolerance=settings.orchestration.norm_tolerance,
    )
    return history, out, summary


def test_report_has_every_plot_with_its_data_points(report):
    history, out, summary = report
    html = out.read_text()
    done = len(history.hours) - 1  # the last hour was rejected: not a done run
    assert summary["hourly_runs"] == done and summary["backfills"] == 1 and summary["alerts"] == 1
    c = charts(html).charts
    assert set(c) == {*HOURLY_CHARTS, *MODEL_CHARTS}
    for name in HOURLY_CHARTS:
        assert int(c[name]["data-points"]) == c[name]["pt"] > 0, name
    stamps = {p[0] for p in c["coverage"]["xy"]}
    assert len(stamps) == done
    assert c["quarantine"]["pt"] == done * 4  # one stacked bar segment per reason and hour
    by_reason = {}
    for x, y in c["quarantine"]["xy"]:
        by_reason[x] = by_reason.get(x, 0) + y
    assert sorted(by_reason.values()) == sorted(
        sum(q.values()) for t, q in history.quarantine.items() if t != history.rejected
    )
    assert c["stage-seconds"]["pt"] == done * 5  # sequences, encode, publish, graph, validate
    assert all(0.5 < y <= 1.0 for _, y in c["drift"]["xy"]) and c["drift"]["pt"] == done
    assert c["train-loss"]["pt"] == 4 and c["train-valid"]["pt"] == 8  # 4 epochs, NDCG + HR
    assert c["baselines"]["pt"] == 6 * 3  # hr/ndcg @10/20/50 for the model, popularity, bag-of-items
    assert 'class="threshold"' in html  # coverage/drift/recall thresholds drawn
    assert "recall: graph recall@k 0.850" in html and stamp(history.rejected) in html  # the failure, listed


def test_report_is_self_contained(report):
    _, out, _ = report
    html = out.read_text()
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", html, re.I)
    assert "@import" not in html and "url(" not in html
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace is a name, never fetched
    assert "<svg" in html and "<script>" in html  # inline only


def test_report_interval_filters_the_runs(settings, tmp_path):
    history = write_history(settings)
    out = write_report(settings.layout(), MODEL, T0, T0 + 2 * HOUR, tmp_path / "r.html")
    assert out["hourly_runs"] == 2 and out["backfills"] == 0 and out["alerts"] == 0  # (T0, T0+2h]
    empty = write_report(settings.layout(), "v-unknown", T0, history.hours[-1], tmp_path / "e.html")
    assert empty["hourly_runs"] == 0 and "no data in this range" in (tmp_path / "e.html").read_text()


def test_report_without_training_history_says_so(settings, tmp_path):
    from tests.batch_runs import write_artifact

    write_history(settings)
    write_artifact(settings.layout(), history=False)  # the artifacts encoder.train writes today
    write_report(settings.layout(), MODEL, T0, T0 + 3 * HOUR, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "no per-epoch history" in html and 'data-chart="baselines"' in html
    assert 'data-chart="train-loss"' not in html


def test_soe_report_command(settings, tmp_path):
    history = write_history(settings)
    env = {"SOE_DATA__ROOT": str(settings.layout().root)}
    out = tmp_path / "cli.html"
    interval = f"{T0.isoformat()}/{history.hours[2].isoformat()}"
    args = ["report", "--model", MODEL, "--interval", interval, "--out", str(out)]
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["hourly_runs"] == 3 and out.is_file()
    r = CliRunner().invoke(app, ["report"], env=env)  # defaults: the newest run's model, all its runs
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["model"] == MODEL and summary["hourly_runs"] == len(history.hours) - 1
    assert Path(summary["report"]).parent == settings.layout().root / "reports"
    r = CliRunner().invoke(app, ["report", "--interval", "nonsense"], env=env)
    assert r.exit_code == 2 and "START/END" in r.output


# -- headless Chromium -------------------------------------------------------------------------------
def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def run_chromium(binary: str, work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={work / 'profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    env = {**os.environ, "HOME": str(work)}  # a throwaway profile and cache
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def png_info(path: Path) -> tuple[int, int, float]:
    """(width, height, share of non-zero bytes in the filtered pixel stream): ~0 for a blank page."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, i = b"", 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"IDAT":
            idat += data[i + 8 : i + 8 + n]
        i += 12 + n
    raw = zlib.decompress(idat)
    return width, height, 1.0 - raw.count(0) / len(raw)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out, _ = report
    binary = chromium()
    url = out.resolve().as_uri()
    dom = run_chromium(binary, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = charts(dom.stdout)
    assert page.body.get("data-report-ready") == str(len(HOURLY_CHARTS) + len(MODEL_CHARTS))  # the script ran
    for name, c in page.charts.items():
        w, h = (int(x) for x in c["data-rendered"].split("x"))
        assert w >= 300 and h >= 150, (name, c["data-rendered"])  # laid out at a visible size
        assert c["data-drawn"] == c["data-points"] == str(c["pt"]), name  # every point is in the live DOM
    shot = tmp_path / "report.png"
    r = run_chromium(binary, tmp_path, f"--screenshot={shot}", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    width, height, ink = png_info(shot)
    assert (width, height) == WINDOW
    assert shot.stat().st_size > 50_000 and ink > 0.02, (shot.stat().st_size, ink)
    if os.environ.get("SOE_REPORT_SCREENSHOT"):  # to refresh docs/img/report.png by hand
        shutil.copy(shot, os.environ["SOE_REPORT_SCREENSHOT"])
