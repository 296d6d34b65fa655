"""Fault injection for the chaos campaign (`bench/chaos.py`), and the readers' independent model.

Nothing here changes an outcome: faults are done to the product from outside (a ``kill -9`` of a
process group, a redis-server killed and restarted on its own config, a full filesystem, a corrupt
file, a crashed writer's leftovers), and the product is driven only through its entry points (``soe``
CLI subprocesses, and `soe.flows.hourly.run_interval` in a driver subprocess that prints each step's
result, so that a kill lands inside a chosen step).

`expected_view` is the model of what readers should see, computed from the disk alone with pyarrow
(not the store's code): the run manifests marked done, the current model from the newest done
backfill that switched, and per user the vector of the newest done ``as_of`` of that model.
`judge_reads` compares what a reader gets with it.

    python -m bench.faults interval START END      # the driver (settings from SOE_* env)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# -- processes ----------------------------------------------------------------------------------------


@dataclass
class CliResult:
    args: list[str]
    rc: int
    output: str  # stdout and stderr
    seconds: float
    stdout: str = ""

    def last_json(self) -> dict:
        """The command's result: the last line of its stdout, one JSON object."""
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output


def soe(args: list[str], env: dict[str, str], timeout: float = 300) -> CliResult:
    """One ``soe`` CLI command in a subprocess (its stdout and stderr together)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [str(Path(PY).parent / "soe"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(args, p.returncode, p.stdout + p.stderr, time.perf_counter() - t0, p.stdout)


class Driver:
    """`run_interval` of one hour in a subprocess of its own session; ``kill -9`` of the whole group."""

    def __init__(self, start: str, end: str, env: dict[str, str], log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.faults", "interval", start, end],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.fh,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def wait_for(self, prefix: str, timeout: float) -> bool:
        """Until a step line starting with ``prefix`` is printed (False: the run ended or timed out first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(x.startswith(prefix) for x in self.lines):
                return True
            if self.proc.poll() is not None:
                self._reader.join(2)
                return any(x.startswith(prefix) for x in self.lines)
            time.sleep(0.02)
        return False

    def kill9(self) -> dict[str, Any]:
        """SIGKILL to the process group (the driver, its Spark JVM, its workers)."""
        finished = self.proc.poll() is not None
        if not finished:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                finished = True
        self.proc.wait()
        self._reader.join(5)
        self.fh.close()
        return {
            "killed": not finished,
            "rc": self.proc.returncode,
            "last_step": self.lines[-1] if self.lines else None,
        }

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        self.fh.close()
        return rc


def driver_main(start: str, end: str) -> None:
    from core.layout import utc
    from soe.config import load_settings
    from soe.flows import hourly

    s = load_settings()
    print("BEGIN", flush=True)

    def on_stage(r: dict[str, Any]) -> None:
        print(f"{r['stage']} {r.get('shard', '')}".strip(), flush=True)

    hourly.run_interval(s, utc(start), utc(end), on_stage=on_stage)
    print("DONE", flush=True)


# -- redis-server ---------------------------------------------------------------------------------------


def kill_redis(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a child of this process stays a zombie until reaped
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.01)


def restart_node(node_dir: Path, port: int, timeout: float = 20) -> int:
    """Start a killed redis-server again on its own generated config (AOF and nodes.conf as it left them)."""
    import redis

    proc = subprocess.Popen(
        ["redis-server", str(node_dir / "redis.conf")],
        cwd=node_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return proc.pid
        except Exception:  # loading the AOF, or not listening yet
            time.sleep(0.05)
    raise TimeoutError(f"redis-server on {port} did not come back")


def wait_cluster_ok(ports: list[int], timeout: float = 30) -> float:
    import redis

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            infos = [redis.Redis(port=p).execute_command("CLUSTER INFO") for p in ports]
            if all((i.get("cluster_state") if isinstance(i, dict) else "") == "ok" for i in infos):
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("cluster_state not ok")


# -- disk -------------------------------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> bool:
    """A size-limited tmpfs at ``path``, holding what was there (needs root and mount rights)."""
    aside = path.with_name(path.name + ".aside")
    path.mkdir(parents=True, exist_ok=True)
    os.replace(path, aside)
    path.mkdir()
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    if ok:
        subprocess.run(["cp", "-a", f"{aside}/.", str(path)], check=True)
    else:
        path.rmdir()
    subprocess.run(["rm", "-rf", str(aside)] if ok else ["mv", str(aside), str(path)], check=True)
    return ok


def umount(path: Path) -> None:
    """Copy the tmpfs's content back onto the real disk and unmount it."""
    aside = path.with_name(path.name + ".copy")
    subprocess.run(["cp", "-a", str(path), str(aside)], check=True)
    subprocess.run(["umount", str(path)], check=True)
    path.rmdir()
    os.replace(aside, path)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``path`` with a ballast file until ENOSPC (``leave`` bytes short)."""
    ballast = path / "ballast.bin"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(ballast, "wb") as fh:
        chunk = b"\0" * 2**16
        left = max(0, free - leave)
        try:
            while left > 0:
                left -= fh.write(chunk[: min(len(chunk), left)])
                fh.flush()
        except OSError:
            pass
    return ballast


def corrupt(path: Path) -> None:
    """Keep the first half of a file and overwrite the rest with garbage (a torn write)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\x5a" * (len(data) - len(data) // 2))


def crash_leftovers(root: Path, model: str, as_of_stamp: str) -> list[str]:
    """What writers killed half-way leave: hidden temp dirs and a marker-less snapshot directory."""
    made = []
    for d in (root / "embeddings" / model, root / "state", root / "active", root / "graph" / model):
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".as_of={as_of_stamp}.tmp-deadbeef"
        (tmp / "shard=00000").mkdir(parents=True, exist_ok=True)
        (tmp / "shard=00000" / "part-00000.parquet").write_bytes(b"PAR1 half a file")
        made.append(str(tmp))
    old = time.time() - 3 * 86400  # the crash was days ago (a young temp dir may be a live writer's)
    for tmp in made:
        for dirpath, _, files in os.walk(tmp):
            for name in files:
                os.utime(Path(dirpath) / name, (old, old))
            os.utime(dirpath, (old, old))
    half = root / "embeddings" / model / f"as_of={as_of_stamp}" / "shard=00000"  # no _SUCCESS anywhere
    half.mkdir(parents=True, exist_ok=True)
    (half / "part-00000.parquet").write_bytes(b"PAR1 torn")
    return made + [str(half)]


# -- the independent model of what readers should see ------------------------------------------------


@dataclass
class Expected:
    current: str | None
    done: dict[str, list[str]]  # model -> done as_of stamps, oldest first
    vectors: dict[str, dict[int, tuple[str, np.ndarray]]]  # model -> user -> (as_of, vector)
    history: dict[str, dict[int, list[np.ndarray]]] = field(default_factory=dict)  # older vectors per user
    # vectors of complete snapshots on disk whose run is not done (yet): (as_of, vector) per user
    pending: dict[str, dict[int, list[tuple[str, np.ndarray]]]] = field(default_factory=dict)

    def users(self, model: str | None = None) -> np.ndarray:
        return np.array(sorted(self.vectors.get(model or self.current or "", {})), dtype=np.int64)


def _manifests(root: Path, dag: str) -> list[tuple[str, dict]]:
    out = []
    for p in sorted((root / "manifests" / dag).glob("as_of=*.json")):
        try:
            out.append((p.stem.split("=", 1)[1], json.loads(p.read_text())))
        except (ValueError, OSError):
            continue
    return out


def read_shards(snapshot: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of every complete shard of one embedding snapshot, with pyarrow alone."""
    import pyarrow.parquet as pq

    ids, vecs = [], []
    for shard in sorted(snapshot.glob("shard=*")):
        if not (shard / "_SUCCESS").is_file():
            continue
        for f in sorted(shard.glob("*.parquet")):
            try:
                t = pq.read_table(f, columns=["user_id", "vector"])
            except Exception:  # a corrupt shard: what it held is not known from disk
                continue
            ids.append(t["user_id"].to_numpy())
            v = t["vector"].combine_chunks()
            vecs.append(v.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(t), -1))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(vecs)


def expected_view(root: Path) -> Expected:
    done: dict[str, set[str]] = {}
    current, current_at = None, ""
    for dag in ("soe_hourly", "soe_backfill"):
        for as_of, m in _manifests(root, dag):
            model = m.get("model_version")
            if model:
                done.setdefault(model, set()).add(as_of)
            switched = ((m.get("stages") or {}).get("switch") or {}).get("current")
            if dag == "soe_backfill" and switched and as_of >= current_at:
                current, current_at = switched, as_of
    vectors: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
    history: dict[str, dict[int, list[np.ndarray]]] = {}
    for model, stamps in done.items():
        per, hist = vectors.setdefault(model, {}), history.setdefault(model, {})
        for as_of in sorted(stamps):
            ids, vecs = read_shards(root / "embeddings" / model / f"as_of={as_of}")
            for u, v in zip(ids.tolist(), vecs):
                if u in per:
                    hist.setdefault(u, []).append(per[u][1])
                per[u] = (as_of, v)
    pending: dict[str, dict[int, list[tuple[str, np.ndarray]]]] = {}
    for model, stamps in done.items():
        for snap in sorted((root / "embeddings" / model).glob("as_of=*")):
            as_of = snap.name.split("=", 1)[1]
            if as_of in stamps or not (snap / "_SUCCESS").is_file():
                continue
            ids, vecs = read_shards(snap)
            for u, v in zip(ids.tolist(), vecs):
                pending.setdefault(model, {}).setdefault(u, []).append((as_of, v))
    return Expected(current, {m: sorted(s) for m, s in done.items()}, vectors, history, pending)


def rejected_vectors(root: Path) -> dict[int, list[np.ndarray]]:
    out: dict[int, list[np.ndarray]] = {}
    for snap in (root / "rejected").glob("*/as_of=*/embeddings"):
        ids, vecs = read_shards(snap)
        for u, v in zip(ids.tolist(), vecs):
            out.setdefault(u, []).append(v)
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=2e-3))


def classify(
    exp: Expected, model: str | None, user: int, got: np.ndarray | None, rejected: dict[int, list[np.ndarray]]
) -> str | None:
    """None when the read is what the model says; "pending" when it is the vector of a complete, validated
    snapshot of a newer hour whose run is not marked done yet (a publish cut short: per user newer, not
    wrong); else why it is wrong: missing | unexpected | older | rejected | mixed | wrong_model."""
    if model != exp.current:
        return "wrong_model"
    want = exp.vectors.get(model or "", {}).get(user)
    if want is None:
        if got is not None and any(same(got, v) for _, v in exp.pending.get(model or "", {}).get(user, [])):
            return "pending"
        return None if got is None else "unexpected"
    if got is None:
        return "missing"
    if same(got, want[1]):
        return None
    if any(same(got, v) for v in rejected.get(user, [])):
        return "rejected"
    if any(same(got, v) and a > want[0] for a, v in exp.pending.get(model or "", {}).get(user, [])):
        return "pending"
    if any(same(got, v) for v in exp.history.get(model or "", {}).get(user, [])):
        return "older"
    return "mixed"


def judge_reads(
    settings, exp: Expected, extra_users=(), root: Path | None = None, exclude=()
) -> dict[str, Any]:
    """Read every expected user (and ``extra_users``, less ``exclude``) the way a ranker does (through the
    current-model pointer); count the wrong reads by kind ("pending" is counted apart, not as wrong)."""
    from store.client import LookupClient

    users = np.unique(np.concatenate([exp.users(), np.asarray(list(extra_users), dtype=np.int64)]))
    users = users[~np.isin(users, np.asarray(list(exclude), dtype=np.int64))]
    client = LookupClient(settings.redis)
    model = client.current_model()
    vecs, found = client.get(users) if len(users) else (np.zeros((0, 0)), np.zeros(0, bool))
    rejected = rejected_vectors(root) if root is not None else {}
    kinds: dict[str, int] = {}
    for i, u in enumerate(users.tolist()):
        why = classify(exp, model, u, np.asarray(vecs[i], np.float32) if found[i] else None, rejected)
        if why:
            kinds[why] = kinds.get(why, 0) + 1
    pending = kinds.pop("pending", 0)
    return {
        "users": int(len(users)),
        "wrong": int(sum(kinds.values())),
        "kinds": kinds,
        "pending": pending,
        "model": model,
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "interval":
        driver_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
