"""The data contracts, defined once: Arrow schemas with a version number.

Every table SoE writes or reads carries its contract name and version in the Arrow schema metadata
(``soe.contract`` / ``soe.contract_version``), so a reader can refuse a file it does not understand.

* **event** (input): one row per raw user event.
* **sequence** (pipelines -> encoder): one row per user, the last N events as parallel lists,
  oldest -> newest. Raw ids: hashing is the encoder's job, so a new model never needs new sequences.
* **embedding** (encoder -> store): one L2-normalised float16 vector per user.
* **neighbours** (graph -> store): the k nearest users of a user, best first.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")  # every timestamp in SoE: milliseconds, UTC

# Optional categorical attributes of an event (int64 raw ids). Each becomes one hashed embedding
# table in the encoder and one list column in the sequence contract.
ATTRIBUTE_COLUMNS: tuple[str, ...] = ("category_id", "advertiser_id", "campaign_id")
# Optional request context of an event. Kept in the event log; not part of sequences.
CONTEXT_COLUMNS: tuple[str, ...] = ("device", "country")


def list_of(item: pa.DataType, size: int = -1) -> pa.DataType:
    """A list type whose child is named "element", as Parquet (and Spark) store lists: round-trips exactly."""
    return pa.list_(pa.field("element", item), size)


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    schema: pa.Schema
    required: tuple[str, ...]  # columns that must be present in any input file

    def check_version(self, schema: pa.Schema) -> None:
        """Raise if ``schema`` carries another contract or a newer version than this code knows."""
        meta = schema.metadata or {}
        name = meta.get(b"soe.contract", b"").decode()
        if name and name != self.name:
            raise ContractError(f"expected a {self.name!r} table, got a {name!r} table")
        version = int(meta.get(b"soe.contract_version", b"0") or 0)
        if version > self.version:
            raise ContractError(
                f"{self.name} table has contract version {version}, "
                f"this code reads up to {self.version}: upgrade SoE"
            )


class ContractError(ValueError):
    """A table or file breaks a contract as a whole (e.g. a required column is missing)."""


def _with_meta(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"soe.contract": name, "soe.contract_version": str(version)})


EVENT = Contract(
    name="event",
    version=1,
    schema=_with_meta(
        "event",
        1,
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("item_id", pa.int64(), nullable=False),
            *[pa.field(c, pa.int64()) for c in ATTRIBUTE_COLUMNS],
            *[pa.field(c, pa.string()) for c in CONTEXT_COLUMNS],
        ],
    ),
    required=("user_id", "ts", "event_type", "item_id"),
)

SEQUENCE = Contract(
    name="sequence",
    version=1,
    schema=_with_meta(
        "sequence",
        1,
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("as_of", TS, nullable=False),
            pa.field("n_events", pa.int32(), nullable=False),
            pa.field("ts", list_of(TS), nullable=False),
            pa.field("event_type", list_of(pa.string()), nullable=False),
            pa.field("item_id", list_of(pa.int64()), nullable=False),
            *[pa.field(c, list_of(pa.int64()), nullable=False) for c in ATTRIBUTE_COLUMNS],
        ],
    ),
    required=("user_id", "as_of", "n_events", "ts", "event_type", "item_id"),
)

NEIGHBOURS = Contract(
    name="neighbours",
    version=1,
    schema=_with_meta(
        "neighbours",
        1,
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("neighbor_ids", list_of(pa.int64()), nullable=False),
            pa.field("scores", list_of(pa.float32()), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("as_of", TS, nullable=False),
        ],
    ),
    required=("user_id", "neighbor_ids", "scores", "model_version", "as_of"),
)

EMBEDDING_VERSION = 1


def embedding_contract(dim: int) -> Contract:
    """The embedding contract for vectors of ``dim`` dimensions (the dim is fixed per model)."""
    if dim <= 0:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    schema = _with_meta(
        "embedding",
        EMBEDDING_VERSION,
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("vector", list_of(pa.float16(), dim), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("as_of", TS, nullable=False),
            pa.field("n_events", pa.int32(), nullable=False),
        ],
    )
    return Contract("embedding", EMBEDDING_VERSION, schema, ("user_id", "vector", "model_version", "as_of"))


def conform(table: pa.Table, contract: Contract) -> pa.Table:
    """Select, order and cast ``table``'s columns to the contract; missing optional columns become null.

    Raises ContractError naming the missing required columns. Use `core.validation` for row-level
    checks of events; this is the schema-level step for tables our own code produced.
    """
    contract.check_version(table.schema)
    missing = [c for c in contract.required if c not in table.column_names]
    if missing:
        raise ContractError(
            f"{contract.name} table is missing required column(s) {missing}; "
            f"the {contract.name} contract v{contract.version} needs {list(contract.required)}"
        )
    columns = []
    for field in contract.schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=contract.schema)
