"""The encoder's architecture config: `ModelConfig` and its named embedding tables (torch-free).

This module imports no torch, so the config section that overrides it (`encoder.settings`) loads
in milliseconds with the rest of the configuration. `encoder.model` builds the network from it.

Embedding tables are named and configured one per table, torchrec style (`TableConfig`: a name,
the feature it embeds, its rows): ``item`` (the ``item_id`` feature) first, then one table per
attribute column (``category``, ``advertiser``, ``campaign``). The model keys its tables by name,
and the hash functions are salted by the feature name, so a table's rows never depend on its
position in the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

from core.contracts import ATTRIBUTE_COLUMNS

DEFAULT_ACTIONS = ("impression", "click", "conversion", "view", "search")
ITEM_FEATURE = "item_id"

# the user vector: the output at the newest position, or learned-query attention pooling
Pooling = Literal["last", "attention"]
# where position 0 is: the newest event (SASRec's padded positions: the newest always at the same
# embedding) or the oldest kept event (the newest's position then moves with the history's length)
Positions = Literal["from_newest", "from_oldest"]
# fields added after artifacts existed: the value that reproduces what those artifacts were trained with
LEGACY_DEFAULTS = {"positions": "from_oldest", "unit_items": True, "use_event_gap": False, "use_idle": False}


@dataclass(frozen=True)
class TableConfig:
    """One hashed embedding table: ``name`` (module key), the ``feature`` column it embeds, its rows."""

    name: str  # key of the table in UserEncoder.tables, e.g. "item", "category"
    feature: str  # the SEQUENCE list column it embeds (and the hash salt), e.g. "item_id"
    num_embeddings: int  # hash buckets; row 0 is the padding / missing-value row


def table_name(feature: str) -> str:
    """``item_id`` -> ``item``, ``category_id`` -> ``category``: the table's name from its feature."""
    return feature.removesuffix("_id")


@dataclass
class ModelConfig:
    d_model: int = 64  # token / user vector width D
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads (d_model % n_heads == 0)
    max_len: int = 200  # newest events kept per user (T upper bound)
    dropout: float = 0.3  # dropout on tokens, residual branches, MLP (training; Sports: 0.3 > 0.1, 0.5)
    attn_dropout: float = 0.0  # dropout on attention weights (costly on CPU; off by default)
    item_dropout: float = 0.0  # training: share of tokens whose item and attribute embedding is dropped
    mlp_ratio: int = 4  # hidden width of the block MLP = mlp_ratio * d_model
    item_buckets: int = 2**18  # rows of the item table (2 hashes: ~2^36 distinct pairs, fine for 1e8+ ids)
    attr_buckets: int = 2**14  # rows of each attribute hash table (category, advertiser, campaign)
    n_hashes: int = 2  # hash functions per id; their rows are summed (hash embedding)
    hash_seed: int = 0x5EED  # seed of the hash functions (part of the artifact: changing it changes every id)
    attributes: tuple[str, ...] = ATTRIBUTE_COLUMNS  # attribute features besides item_id, one table each
    actions: tuple[str, ...] = DEFAULT_ACTIONS  # action vocabulary; 0 = padding, len+1 = unknown type
    n_time_buckets: int = 24  # log2 time-gap buckets of (as_of - ts) in seconds; 0 = padding
    use_action: bool = True  # add the action-type embedding
    use_time: bool = True  # add the time-gap bucket embedding (and the gap to the event before, below)
    use_event_gap: bool = False  # with use_time: add the log2 bucket of the gap to the event before (off:
    # level on ML-100K and the synthetic log over 3 seeds, docs/encoder.md twelfth pass)
    use_idle: bool = True  # with use_time: condition the user vector on how long the user has been idle
    # when it is computed (as_of - newest event; training: a random moment before each query's next event;
    # ML-100K served hourly +14 % over the time tokens alone, docs/encoder.md sixteenth pass)
    use_attributes: bool = True  # add the attribute tables (False: item id only, plain SASRec)
    use_context: bool = True  # add hour-of-day / weekday of as_of beside the sequence
    pooling: Pooling = "last"  # "last" (newest position) or "attention" (learned-query pooling)
    positions: Positions = "from_newest"  # position embeddings count back from the newest event
    unit_items: bool = True  # L2-normalised target-item vectors (False: a learned norm, a per-item prior)
    tie_items: bool = True  # target-item vectors share the token tables (False: own output tables, 2x rows)

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        self.actions = tuple(self.actions)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"pooling must be one of {get_args(Pooling)}, got {self.pooling!r}")
        if self.positions not in get_args(Positions):
            raise ValueError(f"positions must be one of {get_args(Positions)}, got {self.positions!r}")
        if min(self.item_buckets, self.attr_buckets) < 2 or self.n_hashes < 1 or self.n_time_buckets < 2:
            raise ValueError("hash tables need >= 2 buckets, >= 1 hash function, >= 2 time buckets")
        names = [table_name(f) for f in self.features]
        if len(set(names)) != len(names) or any("." in n or not n for n in names):
            raise ValueError(f"attribute features must give distinct table names, no dots: {self.attributes}")

    @property
    def features(self) -> tuple[str, ...]:
        """The hashed features, item first: ("item_id", *attributes) (the order of the A axis of a batch)."""
        return (ITEM_FEATURE, *self.attributes)

    @property
    def uses_event_gap(self) -> bool:
        """The token holds the gap to the event before (a time feature: only with ``use_time``)."""
        return self.use_time and self.use_event_gap

    @property
    def uses_idle(self) -> bool:
        """The user vector depends on the idle time at ``as_of`` (a time feature: only with ``use_time``)."""
        return self.use_time and self.use_idle

    @property
    def tables(self) -> tuple[TableConfig, ...]:
        """One config per embedding table, in feature order (item first)."""
        return tuple(TableConfig(table_name(f), f, self.buckets(f)) for f in self.features)

    def buckets(self, feature: str) -> int:
        return self.item_buckets if feature == ITEM_FEATURE else self.attr_buckets

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{**LEGACY_DEFAULTS, **{k: v for k, v in d.items() if k in known}})
