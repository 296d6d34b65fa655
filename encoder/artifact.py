"""Model artifacts: ``<root>/models/<version>/``, published atomically (core.atomic).

Contents::

    config.json     ModelConfig (architecture + hashing parameters) and the training settings
    hashing.json    the hashing parameters alone (function, seed, buckets per table, hashes per id)
    weights.pt      state_dict of UserEncoder (CPU tensors; read with weights_only=True; tables keyed by name,
                    older positional keys ``tables.<i>`` are renamed on load)
    metrics.json    evaluation metrics (leave-last-out, baselines, staleness, purity ...)
    MODEL_CARD.md   verdict against every baseline, limitations, lineage (git commit, data, config hash),
                    history, metrics; regenerated whenever the metrics change (`update_metrics`)
    _SUCCESS        marker with a small manifest (version, created_at)

The version id is ``v-<12 hex>``: a hash of the model config, the training settings and the training
window, so retraining the same config on the same window gives the same version (re-publishing it
replaces the directory atomically) and any change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.atomic import is_complete, publish_dir, read_marker, write_json_atomic
from encoder.config import ModelConfig
from encoder.model import UserEncoder

HASH_FUNCTION = "splitmix64(id + salt(table, seed) + golden*(h+1)) % (buckets-1) + 1"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def model_version(cfg: ModelConfig, train_window: Any, train_settings: dict | None = None) -> str:
    """``v-<12 hex>`` derived from the config, the training settings and the training window."""
    payload = {"model": cfg.to_dict(), "window": train_window, "train": train_settings or {}}
    return "v-" + hashlib.sha256(_canonical(payload).encode()).hexdigest()[:12]


def hashing_params(cfg: ModelConfig) -> dict:
    return {
        "function": HASH_FUNCTION,
        "seed": cfg.hash_seed,
        "n_hashes": cfg.n_hashes,
        "buckets": {t.feature: t.num_embeddings for t in cfg.tables},
        "padding_bucket": 0,
    }


# the baselines `encoder.evaluate.leave_last_out_report` scores with the model's code: key prefix -> name
BASELINES = {"pop_": "popularity", "bag_": "bag-of-items", "sasrec_": "plain SASRec"}
HEADLINE = "ndcg@10"  # the metric verdicts are about


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def verdicts(metrics: dict, metric: str = HEADLINE) -> list[dict]:
    """The model against every baseline present in ``metrics`` on ``metric`` (same split, same code)."""
    model = _number(metrics.get(metric))
    out = []
    for prefix, name in BASELINES.items():
        base = _number(metrics.get(prefix + metric))
        if model is None or base is None:
            continue
        out.append(
            {
                "baseline": name,
                "metric": metric,
                "model": model,
                "value": base,
                "delta": model - base,
                "beats": model > base,
            }
        )
    return out


def verdict_text(v: dict) -> str:
    """``beats popularity by +0.0123 NDCG@10`` or ``LOSES to bag-of-items by -0.0040 NDCG@10``."""
    what = f"{v['delta']:+.4f} {v['metric'].upper()}"
    return f"beats {v['baseline']} by {what}" if v["beats"] else f"LOSES to {v['baseline']} by {what}"


def summary_verdict(metrics: dict) -> str:
    """One line: every baseline the model loses to, else that it beats them all (with the closest one)."""
    vs = verdicts(metrics)
    if not vs:
        return "no baseline measured"
    losing = [v for v in vs if not v["beats"]]
    if losing:
        return "; ".join(verdict_text(v) for v in losing)
    best = max(vs, key=lambda v: v["value"])
    return f"beats every baseline ({verdict_text(best)}, the best of {len(vs)})"


def headline(metrics: dict) -> dict:
    """The metrics that matter: NDCG@10, HR@10, the best baseline's NDCG@10 and the verdict."""
    vs = verdicts(metrics)
    best = max(vs, key=lambda v: v["value"]) if vs else None
    ndcg, hr = _number(metrics.get(HEADLINE)), _number(metrics.get("hr@10"))
    return {
        "ndcg@10": round(ndcg, 5) if ndcg is not None else None,
        "hr@10": round(hr, 5) if hr is not None else None,
        "best_baseline": best["baseline"] if best else None,
        "best_baseline_ndcg@10": round(best["value"], 5) if best else None,
        "beats_baselines": all(v["beats"] for v in vs) if vs else None,
        "verdict": summary_verdict(metrics),
    }


def config_hash(cfg_dict: dict, train_settings: dict | None) -> str:
    """sha256 (16 hex) of the model config and the result-determining training settings."""
    payload = _canonical({"model": cfg_dict, "train": train_settings or {}})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _window_text(window: Any) -> str:
    if isinstance(window, dict) and "start" in window:
        rest = ", ".join(f"{k} {v}" for k, v in window.items() if k not in ("start", "end"))
        return f"{window.get('start')} .. {window.get('end')}" + (f" ({rest})" if rest else "")
    return str(window)


def _card(version: str, config: dict, metrics: dict, created_at: str | None = None) -> str:
    """MODEL_CARD.md from the artifact's own files (config.json, metrics.json); regenerated on change."""
    m = config.get("model", {})
    window = config.get("train_window")
    lineage = config.get("lineage") or {}
    history = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    vs = verdicts(metrics)
    lines = [
        f"# Model card: {version}",
        "",
        f"**Verdict**: {summary_verdict(metrics)} (leave-last-out test, NDCG@10).",
        "",
        (
            "**Model**: SoE user-action-as-token encoder (causal pre-norm transformer, "
            f"d={m.get('d_model')}, layers={m.get('n_layers')}, heads={m.get('n_heads')}, "
            f"max_len={m.get('max_len')}, pooling={m.get('pooling')}; "
            f"features: action={m.get('use_action')}, time={m.get('use_time')} "
            f"(gap to the event before={m.get('use_event_gap', False)}), "
            f"attributes={m.get('use_attributes')}, context={m.get('use_context')})."
        ),
        f"**Training window**: {_window_text(window)}",
        "",
        "## Against the baselines",
        "",
        "| scorer | NDCG@10 | HR@10 | verdict |",
        "|---|---|---|---|",
        f"| this model | {_fmt(metrics.get('ndcg@10'))} | {_fmt(metrics.get('hr@10'))} | |",
    ]
    prefix = {name: p for p, name in BASELINES.items()}
    lines += [
        f"| {v['baseline']} | {_fmt(v['value'])} | {_fmt(metrics.get(prefix[v['baseline']] + 'hr@10'))} "
        f"| {verdict_text(v)} |"
        for v in vs
    ]
    if not vs:
        lines.append("| (no baseline measured) | | | |")
    stopped = [h for h in history if h.get("stopped")]
    lines += [
        "",
        "## Limitations",
        "",
        f"- Data window: trained on {_window_text(window)} only; behaviour after its end (new items, "
        "new campaigns, seasonal shifts) is not seen, and the vectors go stale as users act.",
        "- Evaluation protocol: offline leave-last-out on the training data's own users: each user's last "
        "positive event is the target, the one before it validates (early stopping), inputs are every event "
        "before the target; full ranking over the catalogue of items seen in this data, the user's history "
        f"items excluded; {metrics.get('test_users', '?')} test users. The baselines are scored by the same "
        "code on the same split. Not an online (A/B) measure, and no held-out users or later period.",
    ]
    if stopped:
        lines.append(
            f"- Training was cut by its time budget in epoch {stopped[-1].get('epoch')}: "
            "the weights are those of the best epoch seen, not of a finished schedule."
        )
    lines += [
        "",
        "## Lineage",
        "",
        f"- code: git commit {lineage.get('git_commit') or 'unknown (not a git checkout at train time)'}",
        f"- data: {lineage.get('source') or 'unknown source'}; window {_window_text(window)}",
        f"- config hash: {lineage.get('config_hash') or config_hash(m, config.get('train'))} "
        "(model config + result-determining training settings, config.json)",
        f"- trained: {created_at or 'unknown'}; epochs {metrics.get('epochs', '?')}, "
        f"train_s {_fmt(metrics.get('train_s', '?'))}",
        "",
        "## Intended use",
        "",
        (
            "Nearline user vectors for ranking features, lookalike audiences and "
            "similar-user candidate generation. Vectors are L2-normalised; compare them by dot product. "
            "Not for decisions about individuals outside advertising/recommendation relevance."
        ),
    ]
    if history:
        lines += [
            "",
            "## Training history",
            "",
            "| epoch | loss | valid NDCG@10 | lr | seconds |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {h.get('epoch')} | {_fmt(h.get('loss'))} | {_fmt(h.get('valid_ndcg10'))} | "
            f"{h.get('lr', float('nan')):.2e} | {_fmt(h.get('seconds'))} |"
            for h in history
        ]
    lines += ["", "## Metrics", ""]
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    lines += [f"- {k}: {_fmt(v)}" for k, v in sorted(flat.items())]
    notes = config.get("notes")
    if notes:
        lines += [
            "",
            "## Notes",
            "",
            notes if isinstance(notes, str) else "\n".join(f"- {k}: {v}" for k, v in notes.items()),
        ]
    return "\n".join(lines) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(
    layout,
    model: UserEncoder,
    cfg: ModelConfig,
    *,
    train_window: Any,
    metrics: dict,
    card: dict | str | None = None,
    train_settings: dict | None = None,
    lineage: dict | None = None,
) -> str:
    """Publish ``models/<version>/`` atomically and return the version id.

    ``card``: free notes for the model card; ``lineage``: git commit, data source ... (config.json's
    ``lineage``, with the config hash added here).
    """
    version = model_version(cfg, train_window, train_settings)
    manifest = {"version": version, "created_at": datetime.now(UTC).isoformat()}
    with publish_dir(layout.model(version), manifest) as tmp:
        config = {
            "version": version,
            "model": cfg.to_dict(),
            "train": train_settings or {},
            "train_window": train_window,
            "lineage": {**(lineage or {}), "config_hash": config_hash(cfg.to_dict(), train_settings)},
            "notes": card,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        (tmp / "hashing.json").write_text(json.dumps(hashing_params(cfg), indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
        config = json.loads((tmp / "config.json").read_text())  # the card reads what a regeneration will read
        (tmp / "MODEL_CARD.md").write_text(_card(version, config, metrics, manifest["created_at"]))
        state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
    return version


def load_model(
    layout, version: str, device: str | torch.device = "cpu"
) -> tuple[UserEncoder, ModelConfig, dict]:
    """(model in eval mode on ``device``, its config, meta = config.json + metrics) of a published version."""
    path = Path(layout.model(version))
    if not is_complete(path):
        known = ", ".join(m["version"] for m in list_models(layout)) or "none"
        raise FileNotFoundError(f"model {version!r} is not published under {layout.models} (known: {known})")
    meta = json.loads((path / "config.json").read_text())
    cfg = ModelConfig.from_dict(meta["model"])
    model = UserEncoder(cfg)
    model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    meta["metrics"] = json.loads((path / "metrics.json").read_text())
    meta["path"] = str(path)
    return model.to(device).eval(), cfg, meta


def update_metrics(layout, version: str, metrics: dict) -> None:
    """Merge ``metrics`` into a published model's metrics.json and regenerate its MODEL_CARD.md
    (each an atomic file replace), so the card's verdicts always match the metrics."""
    root = Path(layout.model(version))
    path = root / "metrics.json"
    if not is_complete(root):
        raise FileNotFoundError(f"model {version!r} is not published")
    merged = json.loads(path.read_text())
    merged.update(metrics)
    write_json_atomic(path, merged)
    write_card(layout, version)


def write_card(layout, version: str) -> Path:
    """(Re)generate ``MODEL_CARD.md`` of a published model from its config.json and metrics.json."""
    root = Path(layout.model(version))
    config = json.loads((root / "config.json").read_text())
    metrics = json.loads((root / "metrics.json").read_text())
    card = root / "MODEL_CARD.md"
    _write_text_atomic(card, _card(version, config, metrics, read_marker(root).get("created_at")))
    return card


def delete_model(layout, version: str) -> dict:
    """Remove a published model's directory: renamed aside first (atomic: readers see it or nothing),
    then deleted. Whether it may go (current / previous model) is the caller's check: the encoder
    cannot read the store. Returns what was removed."""
    check_version(version)
    path = Path(layout.model(version))
    if not path.is_dir():
        known = ", ".join(m["version"] for m in list_models(layout)) or "none"
        raise FileNotFoundError(f"model {version!r} is not under {layout.models} (known: {known})")
    files = [f for f in path.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    aside = path.with_name(f".deleting-{version}-{os.getpid()}")
    os.replace(path, aside)
    shutil.rmtree(aside)
    return {"deleted": version, "path": str(path), "files": len(files), "bytes": size}


def check_version(version: str) -> str:
    """A model version names one directory under models/: no path separators, no leading dot."""
    bad = not version or version.startswith(".") or version != version.strip()
    if bad or "/" in version or "\\" in version:
        raise ValueError(f"not a model version: {version!r} (expected e.g. v-0123456789ab)")
    return version


def list_models(layout) -> list[dict]:
    """Published models, newest first: version, created_at, train_window, d_model and `headline`
    (NDCG@10, HR@10, the best baseline's NDCG@10, the verdict against the baselines)."""
    root = Path(layout.models)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        if child.name.startswith(".") or not is_complete(child):
            continue
        config = json.loads((child / "config.json").read_text())
        metrics = json.loads((child / "metrics.json").read_text())
        out.append(
            {
                "version": child.name,
                "created_at": read_marker(child).get("created_at"),
                "train_window": config.get("train_window"),
                "d_model": config["model"]["d_model"],
                **headline(metrics),
            }
        )
    return sorted(out, key=lambda m: m["created_at"] or "", reverse=True)
