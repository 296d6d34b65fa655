"""Writing embedding shards: embedding-contract Parquet, streamed, published atomically.

One worker's output is one directory ``embeddings/<model>/as_of=<T>/shard=<iiiii>/`` holding
``part-00000.parquet`` (row groups appended window by window, so memory stays bounded) and a
``_SUCCESS`` marker whose JSON manifest says what was written (users, dim, model_version, as_of,
seconds, device, ...). It is built in a hidden temp directory and renamed into place by
`core.atomic.publish_dir`: a crash leaves no published shard, and a rerun for the same (model, as_of,
shard) replaces the previous one with identical content, so retries are safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import publish_dir
from core.contracts import TS, embedding_contract
from core.layout import Layout, epoch_ms

PART = "part-00000.parquet"


def shard_dir(layout: Layout, model_version: str, as_of: datetime, shard: int) -> Path:
    """Where worker ``shard``'s vectors for (model, as_of) are published."""
    return layout.embeddings(model_version, as_of) / f"shard={shard:05d}"


def l2_normalise_f16(vectors: np.ndarray) -> np.ndarray:
    """(B, D) float -> (B, D) float16 unit vectors (normalised in fp32, then rounded)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float16)


def embedding_table(
    user_ids: np.ndarray, vectors: np.ndarray, n_events: np.ndarray, model_version: str, as_of: datetime
) -> pa.Table:
    """Rows of the embedding contract; ``vectors`` (B, D) are stored as unit float16."""
    vectors = l2_normalise_f16(vectors)  # (B, D)
    n, dim = vectors.shape
    contract = embedding_contract(dim)
    flat = pa.array(vectors.reshape(-1), type=pa.float16())
    columns = [
        pa.array(np.asarray(user_ids, dtype=np.int64)),
        pa.FixedSizeListArray.from_arrays(flat, type=contract.schema.field("vector").type),
        pa.array([model_version] * n, type=pa.string()),
        pa.array(np.full(n, epoch_ms(as_of), dtype="datetime64[ms]"), type=TS),
        pa.array(np.asarray(n_events, dtype=np.int32)),
    ]
    return pa.Table.from_arrays(columns, schema=contract.schema)


class ShardWriter:
    """Appends embedding rows to one Parquet file inside the shard's temp directory."""

    def __init__(self, directory: Path, dim: int, model_version: str, as_of: datetime):
        self.dim, self.model_version, self.as_of = dim, model_version, as_of
        self.schema = embedding_contract(dim).schema
        self.rows = 0
        # Dictionary-encode only model_version: float16 vector lists read ~3x faster without one.
        self._writer = pq.ParquetWriter(
            Path(directory) / PART, self.schema, compression="zstd", use_dictionary=["model_version"]
        )

    def write(self, user_ids: np.ndarray, vectors: np.ndarray, n_events: np.ndarray) -> None:
        if vectors.shape[1:] != (self.dim,):
            raise ValueError(f"vectors have shape {vectors.shape}, the model's dim is {self.dim}")
        table = embedding_table(user_ids, vectors, n_events, self.model_version, self.as_of)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


@contextmanager
def open_shard(
    layout: Layout, model_version: str, as_of: datetime, shard: int, dim: int, manifest: dict
) -> Iterator[ShardWriter]:
    """Write one shard; it is published (marker + rename) only when the block exits cleanly.

    ``manifest`` is filled in by the caller inside the block and stored in the ``_SUCCESS`` marker.
    """
    with publish_dir(shard_dir(layout, model_version, as_of, shard), manifest) as tmp:
        writer = ShardWriter(tmp, dim, model_version, as_of)
        try:
            yield writer
        finally:
            writer.close()
        manifest["users"] = writer.rows
