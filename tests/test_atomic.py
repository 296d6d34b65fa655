"""Atomic publication: a crash never leaves a directory that looks complete; reruns replace cleanly."""

from __future__ import annotations

import pytest

from core.atomic import clean_temp, is_complete, publish_dir, read_marker, temp_sibling, write_text_atomic


def test_publish_writes_marker_last_and_renames(tmp_path):
    final = tmp_path / "out"
    with publish_dir(final, {"rows": 1}) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not final.exists()
    assert is_complete(final) and read_marker(final) == {"rows": 1}
    assert (final / "a.txt").read_text() == "x"


def test_crash_inside_leaves_nothing_published_and_keeps_previous(tmp_path):
    final = tmp_path / "out"
    with publish_dir(final, {"v": 1}) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with publish_dir(final, {"v": 2}) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert read_marker(final) == {"v": 1} and (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_rerun_replaces_content(tmp_path):
    final = tmp_path / "out"
    for v in (1, 2):
        with publish_dir(final, {"v": v}) as tmp:
            (tmp / f"f{v}").write_text(str(v))
    assert read_marker(final) == {"v": 2}
    assert sorted(p.name for p in final.iterdir()) == ["_SUCCESS", "f2"]


def test_clean_temp_removes_leftovers_of_killed_writers(tmp_path):
    (tmp_path / ".out.tmp-abc").mkdir()
    (tmp_path / "out").mkdir()
    assert clean_temp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_clean_temp_finds_nested_leftovers_but_spares_young_ones(tmp_path):
    """A killed encoder leaves ``embeddings/<m>/as_of=T/.shard=00001.tmp-<id>``; a live writer's is young."""
    import os
    import time

    snap = tmp_path / "embeddings" / "m" / "as_of=20260101T0100Z"
    old = snap / ".shard=00001.tmp-dead"
    (old / "sub").mkdir(parents=True)
    young = snap / ".shard=00002.tmp-live"
    young.mkdir()
    aside = tmp_path / "state" / ".as_of=20260101T0000Z.old-x"
    aside.mkdir(parents=True)
    (snap / "shard=00000").mkdir()
    hour_ago = time.time() - 3600
    for p in (old, aside):
        os.utime(p, (hour_ago, hour_ago))
    assert clean_temp(tmp_path, older_than_s=600) == 2
    assert not old.exists() and not aside.exists()
    assert young.exists() and (snap / "shard=00000").exists()


def test_a_text_file_is_replaced_whole_and_its_temp_name_is_one_clean_temp_removes(tmp_path):
    target = tmp_path / "sub" / "sasrec.txt"
    write_text_atomic(target, "1 2 3\n")
    write_text_atomic(target, "1 4 5\n")  # a rerun replaces it
    assert target.read_text() == "1 4 5\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["sasrec.txt"]  # no temp sibling left
    crashed = temp_sibling(target)  # what a writer killed before its rename leaves
    crashed.write_text("half")
    assert clean_temp(tmp_path) == 1 and not crashed.exists() and target.exists()
