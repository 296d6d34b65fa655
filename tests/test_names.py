"""One rule for names that become paths and Redis keys (core.names), applied by every path builder."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.layout import Layout
from core.names import check_name

T = datetime(2026, 1, 1, 5, tzinfo=UTC)
BAD = ["../../x", "..", "a/b", "a\\b", "", ".hidden", "-rf", "x" * 129, "a b", "a\x00b", "a..b", None, 7]


@pytest.mark.parametrize("bad", BAD)
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ValueError, match="model version"):
        check_name("model version", bad)


@pytest.mark.parametrize("good", ["m-20260101.abc_1", "v1", "A" * 128, "_x"])
def test_safe_names_pass_unchanged(good):
    assert check_name("model version", good) == good


@pytest.mark.parametrize(
    "build",
    [
        lambda lay, v: lay.model(v),
        lambda lay, v: lay.embeddings(v, T),
        lambda lay, v: lay.model_embeddings(v),
        lambda lay, v: lay.graph(v, T),
        lambda lay, v: lay.model_graphs(v),
        lambda lay, v: lay.trainset(v),
        lambda lay, v: lay.manifest(v, T),
    ],
)
def test_no_path_is_built_from_an_unchecked_name(tmp_path, build):
    lay = Layout(tmp_path)
    with pytest.raises(ValueError):
        build(lay, "../../escape")
    path = build(lay, "m-1")
    assert path.resolve().is_relative_to(tmp_path.resolve())
