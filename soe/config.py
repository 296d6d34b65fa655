"""One typed configuration for every component.

The configuration is read in exactly one place, `load_settings`: a YAML file (optional) and then
environment overrides named ``SOE_<SECTION>__<FIELD>`` (nested with ``__``), e.g.
``SOE_REDIS__PORT=6380`` or ``SOE_SEQUENCES__MAX_LEN=100``. Values are parsed as YAML scalars, so
``SOE_EVENTS__EVENT_TYPES='[click, view]'`` works. Components receive their own section
(``settings.redis``, ``settings.train`` ...) and never read the environment themselves.

The defaults are the embedded single-machine setup: local paths under one data root, Spark
``local[*]``, one Redis on 127.0.0.1, device ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from core.layout import Layout
from core.section import Section
from core.settings import DataSettings, EventSettings
from encoder.inference.settings import InferenceSettings
from encoder.settings import TrainSettings
from pipelines.settings import PipelineConfig, SequenceSettings, SparkSettings
from soe.flows.settings import OrchestrationSettings
from store.graph.settings import GraphSettings
from store.service.settings import ServeSettings
from store.settings import RedisSettings

ENV_PREFIX = "SOE_"
CONFIG_ENV = "SOE_CONFIG"  # path of the YAML file, when --config is not given


class Settings(Section):
    """Every section, composed at the top. Each component's entry points take only their own sections."""

    data: DataSettings = Field(default_factory=DataSettings)  # core: the data root
    events: EventSettings = Field(default_factory=EventSettings)  # core: the event vocabulary and limits
    spark: SparkSettings = Field(default_factory=SparkSettings)  # pipelines: the Spark session
    sequences: SequenceSettings = Field(default_factory=SequenceSettings)  # pipelines: last-N state, shards
    inference: InferenceSettings = Field(default_factory=InferenceSettings)  # encoder: batch inference
    train: TrainSettings = Field(default_factory=TrainSettings)  # encoder: training
    redis: RedisSettings = Field(default_factory=RedisSettings)  # store: the Redis vector store
    graph: GraphSettings = Field(default_factory=GraphSettings)  # store: the FAISS user graph
    serve: ServeSettings = Field(default_factory=ServeSettings)  # store: the query service
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)  # soe.flows, dags

    def layout(self) -> Layout:
        """The on-disk layout of this configuration's data root."""
        return self.data.layout()

    def pipeline(self) -> PipelineConfig:
        """The sections the Spark stage (pipelines/) receives."""
        return PipelineConfig(self.data, self.events, self.spark, self.sequences)


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"config override {'.'.join(path)}: {key} is not a section")
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``SOE_A__B=v`` -> ``{"a": {"b": v}}``; values parsed as YAML scalars, except secrets.

    A secret (a field named like ``*password*``) is taken verbatim: YAML would turn ``0123`` into 83,
    ``1_000`` into 1000 or ``12:30`` into 750, and the login would then fail with a different text.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        secret = "password" in path[-1]
        _set_path(tree, path, raw if secret or raw == "" else yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load the settings: defaults <- YAML file <- ``SOE_*`` environment overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV)
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist (from --config or ${CONFIG_ENV})")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"config file {p} is not valid YAML ({getattr(exc, 'problem', None) or exc}{where})"
            ) from None
        if not isinstance(tree, dict):
            raise ValueError(f"config file {p} must hold a mapping of sections, got {type(tree).__name__}")
    tree = _merge(tree, env_overrides(environ))
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


class ConfigError(ValueError):
    """A configuration that does not validate; the message names each field path and never a value."""


def describe(exc: ValidationError) -> str:
    """``redis.port: Input should be a valid integer; ...``: field paths and reasons, no input values.

    Pydantic's own message quotes the offending input, which may be a secret (a password that YAML
    read as a number); this one never does.
    """
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
