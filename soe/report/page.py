"""The run report: one self-contained HTML page per model and time range (`soe report`).

Inline CSS, inline SVG charts (soe.report.svg) and a few lines of inline JavaScript that only note
each chart's rendered size on the page (``data-rendered``), so a headless browser's DOM dump shows
the charts were laid out. Nothing is fetched: the page opens offline and can be mailed as one file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic
from core.layout import Layout, stamp
from soe.flows.metrics import _scorer
from soe.report import svg
from soe.report.data import STAGE_ORDER, ReportData, Run, collect

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:21px;font-weight:600}
header p{margin:0;color:#c7cdd8}
main{max-width:1260px;margin:0 auto;padding:8px 20px 40px}
h2{font-size:17px;margin:26px 0 10px;border-bottom:1px solid #d9dde5;padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{background:#fff;border:1px solid #d9dde5;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:19px}.card span{color:#5b6475;font-size:12px}
.card.bad b{color:#C0392B}.card.ok b{color:#1e7d4f}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #d9dde5;border-radius:6px;padding:6px}
figcaption{color:#5b6475;font-size:12px;padding:0 6px 4px}
svg.chart{display:block;max-width:100%;height:auto}
svg .title{font-weight:600;font-size:13px;fill:#1d2330}
svg .tick{font-size:11px;fill:#5b6475}
svg .grid{stroke:#e6e9ef}svg .axis{stroke:#8a93a3}
svg .empty{font-size:13px;fill:#8a93a3}
table{border-collapse:collapse;background:#fff;font-size:12.5px;width:100%}
th,td{border:1px solid #d9dde5;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f5}td.l,th.l{text-align:left;white-space:normal}
.fail{color:#C0392B;font-weight:600}.pass{color:#1e7d4f}
.note{color:#5b6475}
"""

JS = """
document.querySelectorAll('svg.chart').forEach(function (s) {
  var r = s.getBoundingClientRect();
  s.setAttribute('data-rendered', Math.round(r.width) + 'x' + Math.round(r.height));
  s.setAttribute('data-drawn', String(s.querySelectorAll('.pt').length));
});
document.body.setAttribute('data-report-ready', String(document.querySelectorAll('svg.chart').length));
document.body.setAttribute('data-height', String(document.documentElement.scrollHeight));
"""


def _label(t: datetime) -> str:
    return t.strftime("%m-%d %H:%M")


DASH = "&ndash;"  # an empty cell


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return svg.fmt(v) if abs(v) >= 100 else f"{v:.{digits}g}"
    return escape(str(v))


def _table(head: list[str], rows: Iterable[list[str]], left: int = 1) -> str:
    def cls(i: int) -> str:
        return "l" if i < left else ""

    th = "".join(f'<th class="{cls(i)}">{escape(h)}</th>' for i, h in enumerate(head))
    cells = ("".join(f'<td class="{cls(i)}">{c}</td>' for i, c in enumerate(r)) for r in rows)
    body = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def _first(values: Iterable[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _checks_cell(run: Run) -> str:
    failed = [n for n, c in run.checks.items() if not c.get("ok")]
    if not run.checks:
        return DASH
    if failed:
        return f'<span class="fail">{escape(", ".join(failed))}</span>'
    return '<span class="pass">all passed</span>'


# -- sections ---------------------------------------------------------------------------------------
def cards(d: ReportData) -> str:
    runs = d.runs
    open_alerts = [a for a in d.alerts if not a["repaired"]]
    last = runs[-1] if runs else None
    mean_s = sum(sum(r.stage_seconds.values()) for r in runs) / len(runs) if runs else None
    items = [
        ("hourly runs", str(len(runs)), ""),
        ("failures (not repaired)", f"{len(d.alerts)} ({len(open_alerts)})", "bad" if open_alerts else "ok"),
        ("mean run seconds", _fmt(mean_s, 3), ""),
        ("vectors written", _fmt(sum(r.counts.get("written") or 0 for r in runs)), ""),
        ("last coverage", _fmt(last.value("coverage") if last else None), ""),
        ("last graph recall", _fmt(last.value("recall") if last else None, 3), ""),
        ("backfills", str(len(d.backfills)), ""),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card {cls}"><b>{v}</b><span>{escape(k)}</span></div>' for k, v, cls in items)
        + "</div>"
    )


def hourly_charts(d: ReportData, norm_tolerance: float | None) -> str:
    runs = d.runs
    x = [_label(r.as_of) for r in runs]
    stages = [s for s in STAGE_ORDER if any(s in r.stage_seconds for r in runs)]
    stages += sorted({s for r in runs for s in r.stage_seconds} - set(stages))
    figs = [
        _figure(
            svg.bar_chart(
                "stage-seconds",
                "Stage seconds per hourly run",
                x,
                {s: [r.stage_seconds.get(s) for r in runs] for s in stages},
                y_label="seconds",
            ),
            "Wall seconds of each stage (encode and publish summed over shards), stacked.",
        ),
        _figure(
            svg.line_chart(
                "throughput",
                "Throughput: sequences and encode",
                x,
                {
                    "sequences events/s": [r.rate("valid_events", "sequences") for r in runs],
                    "encode vectors/s": [r.rate("encoded", "encode") for r in runs],
                },
                zero=True,
                y_label="rows/s",
            ),
            "Events merged per second of the Spark step; vectors per second of encoder time "
            "(summed over shards).",
        ),
        _figure(
            svg.line_chart(
                "publish-throughput",
                "Throughput: publish to Redis",
                x,
                {"publish vectors/s": [r.rate("published", "publish") for r in runs]},
                zero=True,
                y_label="rows/s",
            ),
            "Vectors upserted per second of publish time (summed over shards).",
        ),
        _figure(
            svg.line_chart(
                "rows",
                "Rows per hourly run",
                x,
                {
                    "valid events": [r.counts.get("valid_events") for r in runs],
                    "active users": [r.counts.get("active_users") for r in runs],
                    "vectors encoded": [r.counts.get("encoded") for r in runs],
                    "vectors written": [r.counts.get("written") for r in runs],
                },
                zero=True,
                y_label="rows",
            ),
            "Events in, active users, vectors encoded and written to Redis "
            "(an older as_of is never written).",
        ),
        _figure(
            svg.line_chart(
                "coverage",
                "Coverage of the active users",
                x,
                {"coverage": [r.value("coverage") for r in runs]},
                thresholds={"min_coverage": _first(r.threshold("coverage") for r in runs)},
            ),
            "Share of the interval's active users with a vector; "
            "the dashed line is orchestration.min_coverage.",
        ),
        _figure(
            svg.line_chart(
                "drift",
                "Drift: mean cosine to the previous generation",
                x,
                {"mean cosine": [r.value("drift") for r in runs]},
                thresholds={"min_drift_cosine": _first(r.threshold("drift") for r in runs)},
            ),
            "Same users' old vs new vector; gaps are skipped checks (too few users in both generations).",
        ),
        _figure(
            svg.line_chart(
                "norms",
                "Vector norms",
                x,
                {"min ‖v‖": [r.norms[0] for r in runs], "max ‖v‖": [r.norms[1] for r in runs]},
                thresholds=(
                    {"1 - tolerance": 1 - norm_tolerance, "1 + tolerance": 1 + norm_tolerance}
                    if norm_tolerance is not None
                    else None
                ),
            ),
            "Smallest and largest L2 norm of the generation's float16 vectors "
            "(all must be within the tolerance).",
        ),
        _figure(
            svg.bar_chart(
                "bad-norms",
                "Bad vectors (NaN/inf or off unit norm)",
                x,
                {"bad rows": [r.value("norms") for r in runs]},
                y_label="rows",
            ),
            "The norms check's value: any bar above 0 rejects the generation.",
        ),
        _figure(
            svg.line_chart(
                "recall",
                "Graph recall@k",
                x,
                {"recall@k": [r.value("recall") for r in runs]},
                thresholds={"min_graph_recall": _first(r.threshold("recall") for r in runs)},
            ),
            "Sampled recall of the FAISS graph against exact search.",
        ),
    ]
    reasons = sorted({k for r in runs for k in r.quarantine})
    by_reason = {k: [r.quarantine.get(k, 0) for r in runs] for k in reasons} or {"none": []}
    figs.append(
        _figure(
            svg.bar_chart("quarantine", "Quarantined events by reason", x, by_reason, y_label="rows"),
            "Rows the validator rejected in each interval, per reason (stacked).",
        )
    )
    return '<div class="grid">' + "".join(figs) + "</div>"


def runs_table(runs: list[Run]) -> str:
    head = [
        "as_of",
        "flow",
        "attempt",
        "seconds",
        "valid events",
        "quarantined",
        "active users",
        "encoded",
        "written",
        "coverage",
        "drift",
        "bad norms",
        "recall",
        "graph",
        "checks",
    ]
    counts = ("valid_events", "quarantined", "active_users", "encoded", "written")
    rows = [
        [
            stamp(r.as_of),
            r.dag.removeprefix("soe_"),
            str(r.attempt),
            _fmt(sum(r.stage_seconds.values()), 4),
            *(_fmt(r.counts.get(k)) for k in counts),
            _fmt(r.value("coverage")),
            _fmt(r.value("drift"), 3),
            _fmt(r.value("norms")),
            _fmt(r.value("recall"), 3),
            _fmt(r.graph_mode),
            _checks_cell(r),
        ]
        for r in runs
    ]
    if not rows:
        return '<p class="note">No done run of this model in the range.</p>'
    return _table(head, rows, left=2)


def alerts_table(d: ReportData) -> str:
    if not d.alerts:
        return '<p class="note">No failure in the range.</p>'
    rows = [
        [
            escape(a["as_of"]),
            escape(a["dag"].removeprefix("soe_")),
            escape(str(a.get("task", "?"))),
            '<span class="pass">yes</span>' if a["repaired"] else '<span class="fail">no</span>',
            escape(str(a.get("error", ""))[:400]),
        ]
        for a in d.alerts
    ]
    return _table(["as_of", "flow", "task", "repaired", "error"], rows, left=5)


# per-epoch keys that are no validation metric: the epoch, timings, the learning rate (another scale)
NOT_PLOTTED = ("epoch", "s", "seconds", "lr")


def training_section(d: ReportData) -> str:
    art = d.artifact
    out = []
    if not art.get("found"):
        return f'<p class="note">No artifact of {escape(d.model)} under {escape(art.get("path", ""))}.</p>'
    cfg = art.get("config") or {}
    model_cfg = cfg.get("model") or {}
    out.append(
        '<p class="note">'
        + escape(
            f"{art['path']}: d_model={model_cfg.get('d_model')}, layers={model_cfg.get('n_layers')}, "
            f"heads={model_cfg.get('n_heads')}, max_len={model_cfg.get('max_len')}; training window "
            f"{window_text(cfg.get('train_window'))}"
        )
        + "</p>"
    )
    history = art.get("history") or []
    figs = []
    if history:
        xs = [str(h.get("epoch", i)) for i, h in enumerate(history)]
        keys = [k for k, v in history[0].items() if k not in NOT_PLOTTED and isinstance(v, (int, float))]
        loss = [k for k in keys if "loss" in k]
        other = [k for k in keys if k not in loss]
        if loss:
            figs.append(
                _figure(
                    svg.line_chart(
                        "train-loss",
                        "Training loss per epoch",
                        xs,
                        {k: [h.get(k) for h in history] for k in loss},
                    ),
                    "Mean training loss of each epoch.",
                )
            )
        if other:
            figs.append(
                _figure(
                    svg.line_chart(
                        "train-valid",
                        "Validation metrics per epoch",
                        xs,
                        {k: [h.get(k) for h in history] for k in other},
                    ),
                    "Validation metrics after each epoch (early stopping watches NDCG@10).",
                )
            )
    else:
        m = art.get("metrics") or {}
        out.append(
            '<p class="note">The artifact holds no per-epoch history (metrics.json: epochs='
            f"{_fmt(m.get('epochs'))}, best_valid_ndcg10={_fmt(m.get('best_valid_ndcg10'))}, "
            f"train_s={_fmt(m.get('train_s'))}).</p>"
        )
    figs.append(
        _figure(
            baseline_chart(art.get("metrics") or {}),
            "Leave-last-out test metrics of the model and of its popularity and bag-of-items baselines.",
        )
    )
    out.append('<div class="grid">' + "".join(figs) + "</div>")
    out.append(baseline_table(art.get("metrics") or {}))
    if d.trainings:
        rows = []
        for m in d.trainings:
            st = m.get("stages", {})
            ev, gate = st.get("evaluate", {}), st.get("gate", {})
            cand, cur = ev.get("candidate_metrics") or {}, ev.get("current_metrics") or {}
            current = escape(str(ev.get("current"))) if ev.get("current") else DASH
            rows.append(
                [
                    escape(m["as_of"]),
                    _fmt(gate.get("promote")),
                    _fmt(cand.get("ndcg@10")),
                    current,
                    _fmt(cur.get("ndcg@10")),
                    escape(str(gate.get("reason", ""))),
                ]
            )
        out.append(
            "<h3>Training runs that produced this model</h3>"
            + _table(["as_of", "promoted", "ndcg@10", "current model", "its ndcg@10", "gate"], rows, left=1)
        )
    return "".join(out)


def window_text(window: Any) -> str:
    """``{start, end, users, events}`` (encoder.train.train_window) as one readable line."""
    if not isinstance(window, dict):
        return str(window)
    span = " to ".join(str(window[k])[:16].replace("T", " ") for k in ("start", "end") if window.get(k))
    sizes = ", ".join(f"{window[k]} {k}" for k in ("users", "events") if window.get(k) is not None)
    return f"{span} ({sizes})" if sizes else span


def _baseline_metrics(metrics: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float]]]:
    by: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "@" in key:
            scorer, metric = _scorer(key)
            by.setdefault(metric, {})[scorer] = float(v)

    def order(k: str) -> tuple[str, int]:
        name, _, at = k.partition("@")
        return name, int(at) if at.isdigit() else 0

    names = sorted(by, key=order)
    return names, by


def baseline_chart(metrics: dict[str, Any]) -> str:
    names, by = _baseline_metrics(metrics)
    scorers = [s for s in ("model", "pop", "bag") if any(s in by[n] for n in names)]
    labels = {"model": "model", "pop": "popularity baseline", "bag": "bag-of-items baseline"}
    return svg.grouped_bars(
        "baselines",
        "Model vs baselines (leave-last-out test)",
        names,
        {labels[s]: [by[n].get(s) for n in names] for s in scorers} or {"none": []},
    )


def baseline_table(metrics: dict[str, Any]) -> str:
    names, by = _baseline_metrics(metrics)
    if not names:
        return '<p class="note">metrics.json has no @K metrics.</p>'
    rows = []
    for n in names:
        model, pop, bag = (by[n].get(s) for s in ("model", "pop", "bag"))
        best = max((v for v in (pop, bag) if v is not None), default=None)
        lift = f"{(model / best - 1) * 100:+.1f} %" if model is not None and best else DASH
        rows.append([escape(n), _fmt(model), _fmt(pop), _fmt(bag), lift])
    return _table(["metric", "model", "popularity", "bag-of-items", "model vs best baseline"], rows)


def render(d: ReportData, norm_tolerance: float | None = None, generated: datetime | None = None) -> str:
    generated = generated or datetime.now(UTC)
    title = f"SoE run report — {d.model}"
    backfills = f"<h2>Backfills</h2>{runs_table(d.backfills)}" if d.backfills else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body>
<header><h1>{escape(title)}</h1>
<p>Data intervals ending in ({escape(stamp(d.start))}, {escape(stamp(d.end))}] &middot;
generated {escape(generated.strftime("%Y-%m-%d %H:%M UTC"))}
from the run manifests and the model artifact</p></header>
<main>
{cards(d)}
<h2>Hourly refresh</h2>
{hourly_charts(d, norm_tolerance)}
<h2>Model: training and baselines</h2>
{training_section(d)}
{backfills}
<h2>Failures (alerts)</h2>
{alerts_table(d)}
<h2>Runs</h2>
{runs_table(d.runs)}
</main>
<script>{JS}</script>
</body></html>
"""


def write_report(
    layout: Layout, model: str, start: datetime, end: datetime, out: Path, norm_tolerance: float | None = None
) -> dict[str, Any]:
    """Collect and render the report of ``model`` over ``(start, end]``; write it to ``out`` atomically."""
    data = collect(layout, model, start, end)
    html = render(data, norm_tolerance)
    out = Path(out)
    write_text_atomic(out, html)  # a reader never sees half a page
    return {
        "report": str(out),
        "model": model,
        "interval": f"{stamp(data.start)}/{stamp(data.end)}",
        "hourly_runs": len(data.runs),
        "backfills": len(data.backfills),
        "alerts": len(data.alerts),
        "charts": html.count('<svg class="chart"'),
        "bytes": len(html.encode()),
    }
