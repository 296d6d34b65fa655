"""Atomic, idempotent publication of output directories and files.

A writer builds its output in a hidden temporary sibling (``.<name>.tmp-<uuid>``), writes a
``_SUCCESS`` marker holding a small JSON manifest as the last file, and then renames the directory
into place. Readers only trust directories with a marker (`is_complete`). A crash at any point
leaves either the previous published version or nothing, never a half-written directory that looks
complete; leftovers are hidden temp dirs that `clean_temp` removes.

Re-publishing the same directory replaces it: the old version is renamed aside, the new one renamed
in, and the old one deleted. Between those two renames a reader may briefly find no directory (it
then sees "not yet published" and retries), never a mix of both.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = "_SUCCESS"


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    """The manifest stored in a published directory's marker; raises if it is not published."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{path} is not published (no {MARKER} marker)")
    text = marker.read_text()
    return json.loads(text) if text.strip() else {}


def write_marker(path: Path, manifest: dict[str, Any] | None = None) -> None:
    """Write the marker of a directory in place (for writers that cannot rename, e.g. event landing)."""
    _write_json(Path(path) / MARKER, manifest or {})


def temp_sibling(path: Path) -> Path:
    """The hidden temp name a writer builds ``path`` under before renaming it in (`clean_temp` finds it)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def _write_text(path: Path, text: str) -> None:
    tmp = temp_sibling(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    _write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename): a reader sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, text)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically (temp file + rename)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


@contextmanager
def publish_dir(final: Path, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temp directory to write into; on success, mark and rename it to ``final``.

    The manifest dict may be filled in by the caller inside the ``with`` block; it is written into
    the marker at the end. On an exception the temp directory is removed and nothing is published.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    manifest = {} if manifest is None else manifest
    try:
        yield tmp
        _write_json(tmp / MARKER, manifest)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, replacing an existing ``final`` (see module docstring)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex}"
        os.replace(final, old)
    os.replace(src, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_leftover(name: str) -> bool:
    """A hidden temp or replaced-aside entry of a writer (``.<name>.tmp-<id>``, ``.<name>.old-<id>``)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def clean_temp(root: Path, older_than_s: float = 0.0, now: float | None = None) -> int:
    """Remove leftovers of crashed writers anywhere below ``root``; returns how many.

    Only entries older than ``older_than_s`` (by mtime) go: a writer that is still running (a
    concurrent run of the same hour) keeps its young temp directory.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if not is_leftover(name):
                continue
            path = Path(dirpath) / name
            try:
                if now - path.stat().st_mtime < older_than_s:
                    continue
            except FileNotFoundError:  # removed meanwhile
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            n += 1
        dirnames[:] = [d for d in dirnames if not is_leftover(d)]  # never descend into a leftover
    return n
