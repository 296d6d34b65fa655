"""Contracts: versioned schemas that round-trip through Parquet unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.contracts import EVENT, NEIGHBOURS, SEQUENCE, ContractError, conform, embedding_contract

T = datetime(2026, 1, 1, 5, tzinfo=UTC)


def sample(contract):
    rows = {
        "event": [
            dict(
                user_id=1,
                ts=T,
                event_type="click",
                item_id=2,
                category_id=3,
                advertiser_id=None,
                campaign_id=None,
                device="ios",
                country=None,
            )
        ],
        "sequence": [
            dict(
                user_id=1,
                as_of=T,
                n_events=2,
                ts=[T, T],
                event_type=["view", "click"],
                item_id=[5, 6],
                category_id=[1, None],
                advertiser_id=[None, 2],
                campaign_id=[None, None],
            )
        ],
        "neighbours": [dict(user_id=1, neighbor_ids=[2, 3], scores=[0.9, 0.5], model_version="m1", as_of=T)],
        "embedding": [
            dict(user_id=1, vector=list(np.full(4, 0.5, np.float16)), model_version="m1", as_of=T, n_events=3)
        ],
    }[contract.name]
    return pa.Table.from_pylist(rows, schema=contract.schema)


@pytest.mark.parametrize(
    "contract", [EVENT, SEQUENCE, NEIGHBOURS, embedding_contract(4)], ids=lambda c: c.name
)
def test_schema_round_trips_through_parquet(tmp_path, contract):
    table = sample(contract)
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.equals(contract.schema, check_metadata=True)
    assert back.equals(table)
    assert back.schema.metadata[b"soe.contract"] == contract.name.encode()
    assert int(back.schema.metadata[b"soe.contract_version"]) == contract.version


def test_timestamps_are_millisecond_utc():
    assert EVENT.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert SEQUENCE.schema.field("ts").type.value_type == pa.timestamp("ms", tz="UTC")


def test_conform_orders_casts_and_fills_optional_columns():
    raw = pa.table(
        {
            "item_id": pa.array([2], pa.int32()),
            "event_type": ["view"],
            "ts": pa.array([T]),
            "user_id": pa.array([1], pa.int32()),
        }
    )
    out = conform(raw, EVENT)
    assert out.schema.equals(EVENT.schema)
    assert out.column("category_id").null_count == 1


def test_conform_names_missing_required_columns():
    with pytest.raises(ContractError, match="missing required column"):
        conform(pa.table({"user_id": [1]}), SEQUENCE)


def test_newer_contract_version_is_refused():
    newer = SEQUENCE.schema.with_metadata({"soe.contract": "sequence", "soe.contract_version": "99"})
    with pytest.raises(ContractError, match="upgrade SoE"):
        SEQUENCE.check_version(newer)
    with pytest.raises(ContractError, match="expected a 'event' table"):
        EVENT.check_version(SEQUENCE.schema)
