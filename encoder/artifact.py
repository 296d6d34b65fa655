"""Model artifacts: ``<root>/models/<version>/``, published atomically (core.atomic).

Contents::

    config.json     ModelConfig (architecture + hashing parameters) and the training settings
    hashing.json    the hashing parameters alone (function, seed, buckets per table, hashes per id)
    weights.pt      state_dict of UserEncoder (CPU tensors; read with weights_only=True; tables keyed by name,
                    older positional keys ``tables.<i>`` are renamed on load)
    metrics.json    evaluation metrics (leave-last-out, baselines, staleness, purity ...)
    MODEL_CARD.md   data window, metrics, intended use
    _SUCCESS        marker with a small manifest (version, created_at)

The version id is ``v-<12 hex>``: a hash of the model config, the training settings and the training
window, so retraining the same config on the same window gives the same version (re-publishing it
replaces the directory atomically) and any change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
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


def _card(version: str, cfg: ModelConfig, train_window: Any, metrics: dict, card: dict | str | None) -> str:
    lines = [
        f"# Model card: {version}",
        "",
        (
            "**Model**: SoE user-action-as-token encoder (causal pre-norm transformer, "
            f"d={cfg.d_model}, layers={cfg.n_layers}, heads={cfg.n_heads}, max_len={cfg.max_len}, "
            f"pooling={cfg.pooling}; "
            f"features: action={cfg.use_action}, time={cfg.use_time}, attributes={cfg.use_attributes}, "
            f"context={cfg.use_context})."
        ),
        f"**Training window**: {train_window}",
        "",
        (
            "**Intended use**: nearline user vectors for ranking features, lookalike audiences and "
            "similar-user candidate generation. Vectors are L2-normalised; compare them by dot product. "
            "Not for decisions about individuals outside advertising/recommendation relevance."
        ),
        "",
        "## Metrics",
        "",
    ]
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(flat.items())]
    if card:
        lines += [
            "",
            "## Notes",
            "",
            card if isinstance(card, str) else "\n".join(f"- {k}: {v}" for k, v in card.items()),
        ]
    return "\n".join(lines) + "\n"


def save_model(
    layout,
    model: UserEncoder,
    cfg: ModelConfig,
    *,
    train_window: Any,
    metrics: dict,
    card: dict | str | None = None,
    train_settings: dict | None = None,
) -> str:
    """Publish ``models/<version>/`` atomically and return the version id."""
    version = model_version(cfg, train_window, train_settings)
    manifest = {"version": version, "created_at": datetime.now(UTC).isoformat()}
    with publish_dir(layout.model(version), manifest) as tmp:
        config = {
            "version": version,
            "model": cfg.to_dict(),
            "train": train_settings or {},
            "train_window": train_window,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        (tmp / "hashing.json").write_text(json.dumps(hashing_params(cfg), indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
        (tmp / "MODEL_CARD.md").write_text(_card(version, cfg, train_window, metrics, card))
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
    """Merge ``metrics`` into a published model's metrics.json (atomic file replace)."""
    path = Path(layout.model(version)) / "metrics.json"
    if not is_complete(path.parent):
        raise FileNotFoundError(f"model {version!r} is not published")
    merged = json.loads(path.read_text())
    merged.update(metrics)
    write_json_atomic(path, merged)


def list_models(layout) -> list[dict]:
    """Published models, newest first: version, created_at, train_window, a few headline metrics."""
    root = Path(layout.models)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        if child.name.startswith(".") or not is_complete(child):
            continue
        config = json.loads((child / "config.json").read_text())
        metrics = json.loads((child / "metrics.json").read_text())
        headline = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and ("ndcg" in k or "hr" in k)
        }
        out.append(
            {
                "version": child.name,
                "created_at": read_marker(child).get("created_at"),
                "train_window": config.get("train_window"),
                "d_model": config["model"]["d_model"],
                "metrics": dict(sorted(headline.items())[:8]),
            }
        )
    return sorted(out, key=lambda m: m["created_at"] or "", reverse=True)
