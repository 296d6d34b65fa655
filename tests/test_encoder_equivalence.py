"""Randomized equivalence of every reference path and its fast path (hypothesis, tiny models, bounded time).

One switch per layer, each side compared on random models and random batches:

* attention kernel (`UserEncoder.set_attention`): ``sdpa`` == ``reference``, every position, both poolings;
* inference path (`encoder.inference.paths`): ``newest_only`` == ``full`` == ``naive``;
* batching: a user's vector alone == in any batch / padded length == through the engine's bucketing;
* dtypes: fp32 tight; bf16 autocast on the CPU against the fp32 reference, looser (cosine per user);
* the Redis value format: the single-value encoder == the batch encoder, byte for byte.

Models are re-initialised with large random weights (the default 0.02 init would hide differences),
and sequences include users with 1 event, exactly N and more than N (truncated).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoder.config import ModelConfig
from encoder.device import select_device
from encoder.features import featurize
from encoder.inference.engine import BatchEncoder
from encoder.inference.paths import forward_for
from encoder.inference.sample import AS_OF, random_sequences
from encoder.inference.settings import InferenceSettings
from encoder.model import UserEncoder
from store import format as fmt

FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FP32_ATOL = 2e-5  # unit vectors, a few float32 roundings apart
BF16_MIN_COSINE = 0.97  # bf16 keeps 8 mantissa bits: per-user cosine to the fp32 reference (seen >= 0.987)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@st.composite
def models(draw, poolings=("last", "attention")) -> UserEncoder:
    """A tiny UserEncoder of random shape, features and (large) weights, in eval mode."""
    heads = draw(st.sampled_from([1, 2, 4]))
    cfg = ModelConfig(
        d_model=heads * draw(st.sampled_from([2, 4, 8])),
        n_heads=heads,
        n_layers=draw(st.integers(1, 3)),
        max_len=draw(st.integers(1, 12)),
        mlp_ratio=draw(st.sampled_from([1, 2, 4])),
        dropout=0.0,
        item_buckets=64,
        attr_buckets=16,
        pooling=draw(st.sampled_from(poolings)),
        use_action=draw(st.booleans()),
        use_time=draw(st.booleans()),
        use_idle=draw(st.booleans()),
        use_attributes=draw(st.booleans()),
        use_context=draw(st.booleans()),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = UserEncoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
    return model.eval()


@st.composite
def tables(draw, max_len: int) -> pa.Table:
    """1-6 users (SEQUENCE contract), lengths in 1..max_len+3 with 1 and N drawn often."""
    lengths = draw(
        st.lists(st.one_of(st.just(1), st.just(max_len), st.integers(1, max_len + 3)), min_size=1, max_size=6)
    )
    return random_sequences(np.array(lengths), AS_OF, seed=draw(st.integers(0, 2**16)), n_items=500)


def cases(poolings=("last", "attention")):
    return models(poolings).flatmap(lambda m: st.tuples(st.just(m), tables(m.cfg.max_len)))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def run(fn, batch, dtype: str) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        return fn(batch).float()


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: str) -> None:
    if dtype == "fp32":
        torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=0)
    else:
        assert cosine(got, want).min() > BF16_MIN_COSINE, cosine(got, want)


@FAST
@given(cases(), st.sampled_from(["fp32", "bf16"]))
def test_sdpa_kernel_equals_reference_kernel(case, dtype):
    model, table = case
    batch = featurize(table, model.cfg, as_of=AS_OF)
    reference = run(model.set_attention("reference"), batch, "fp32")
    ref_positions = run(model.encode_positions, batch, "fp32")
    model.set_attention("sdpa")
    assert_close(run(model, batch, dtype), reference, dtype)
    if dtype == "fp32":  # every position (what training uses), real and padded alike
        torch.testing.assert_close(
            run(model.encode_positions, batch, "fp32"), ref_positions, atol=FP32_ATOL, rtol=0
        )


@FAST
@given(
    cases(poolings=("last",)), st.sampled_from(["newest_only", "naive"]), st.sampled_from(["fp32", "bf16"])
)
def test_fast_inference_paths_equal_the_reference_forward(case, path, dtype):
    model, table = case
    batch = featurize(table, model.cfg, as_of=AS_OF)
    reference = run(model.set_attention("reference"), batch, "fp32")  # full forward, reference kernel, fp32
    model.set_attention("sdpa")
    assert_close(run(forward_for(model, path), batch, dtype), reference, dtype)


@FAST
@given(cases(), st.integers(1, 64), st.data())
def test_a_users_vector_does_not_depend_on_its_batch(case, max_batch_tokens, data):
    model, table = case
    cfg = model.cfg
    with torch.inference_mode():
        alone = torch.cat(
            [model(featurize(table.slice(i, 1), cfg, as_of=AS_OF)) for i in range(table.num_rows)]
        )
        together = model(featurize(table, cfg, as_of=AS_OF))
        padded = model(featurize(table, cfg, as_of=AS_OF, pad_to=cfg.max_len + data.draw(st.integers(0, 4))))
    torch.testing.assert_close(together, alone, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(padded, alone, atol=FP32_ATOL, rtol=0)
    inference = InferenceSettings(
        cpu_workers=1,
        threads=1,
        loader_thread=False,
        max_batch_tokens=max_batch_tokens,
        window_users=data.draw(st.integers(1, 6)),
    )
    engine = BatchEncoder(model, select_device("cpu"), inference)
    torch.testing.assert_close(
        torch.from_numpy(engine.encode_table(table, AS_OF)), alone, atol=FP32_ATOL, rtol=0
    )


vectors = st.integers(1, 8).flatmap(
    lambda n: st.integers(1, 48).flatmap(
        lambda d: st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=n * d, max_size=n * d).map(
            lambda xs: np.asarray(xs, np.float32).reshape(n, d)
        )
    )
)


@FAST
@given(vectors, st.sampled_from(sorted(fmt.KINDS)), st.integers(0, 2**50), st.text(min_size=1, max_size=12))
def test_single_value_encoder_equals_batch_encoder_byte_for_byte(v, dtype, as_of, model_version):
    batch = fmt.encode_vectors(v, as_of, model_version, dtype)  # (n, value_size) uint8
    for i in range(len(v)):
        assert fmt.encode_vector(v[i], as_of, model_version, dtype) == batch[i].tobytes()
