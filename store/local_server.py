"""Local redis-server processes: one single node, or a 3-master Redis Cluster, on loopback.

This is the embedded default of SoE (`soe redis start [--cluster]`) and what the test fixtures use.
Everything of one deployment lives in one work dir::

    <work_dir>/servers.json            mode, ports, pids (what `status` and `stop` read)
    <work_dir>/users.acl               the ACL users (SHA-256 hashes only), when started with ``acl=``
    <work_dir>/node-<port>/redis.conf  generated config (loopback only, SoE's listpack settings)
    <work_dir>/node-<port>/redis.pid   pid file written by redis-server
    <work_dir>/node-<port>/redis.log   server log (read back when a start fails)

Ports are given, or chosen free on 127.0.0.1 (for a cluster node also its bus port, port + 10000),
so concurrent test runs on one machine never collide. Servers run in their own session so that
`soe redis start` can return; `stop` ends exactly the pids recorded in servers.json.

The memory layout of the vector store (bucketed small hashes, see docs/format.md) needs hashes to
stay listpack-encoded: `MEMORY_CONF` below is the same as deploy/redis/soe-memory.conf.

Started with ``acl={"soe-admin": ("admin", pw), "soe-writer": ("writer", pw), ...}`` (store.acl), the
servers load those users from an aclfile with the default user switched off (no connection without
credentials), and the admin loads the store's function library (store.functions) before anyone else
connects; `LocalRedis.redis_settings` then connects as that admin (its password is kept in memory
only, never in servers.json). Without ``acl`` the default user is open (a development server); the
store then loads the function library itself on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The server settings the bucketed layout needs (kept equal to deploy/redis/soe-memory.conf).
MEMORY_CONF: dict[str, str] = {
    # a bucket holds ~64-512 users; above this Redis converts it to a hashtable
    "hash-max-listpack-entries": "1024",
    # header (16 B) + payload: d<=504 float16, d<=252 float32, k<=84 neighbours
    "hash-max-listpack-value": "1024",
}
STATE_FILE = "servers.json"


@dataclass
class LocalRedis:
    """A running local deployment: its mode, node ports and pids."""

    work_dir: Path  # where configs, pid files and logs live
    mode: Literal["single", "cluster"]
    ports: list[int]  # one port (single) or one per master (cluster)
    pids: list[int] = field(default_factory=list)  # redis-server pids, same order as ports
    host: str = "127.0.0.1"  # loopback only
    # (user, password) of the admin when started with ACL users; in memory only, never saved or shown
    admin: tuple[str, str] | None = field(default=None, repr=False)

    def redis_settings(self, **overrides):
        """RedisSettings pointing at this deployment (as its admin, when it has ACL users)."""
        from store.settings import RedisSettings

        seeds = [f"{self.host}:{p}" for p in self.ports] if self.mode == "cluster" else []
        creds = {"username": self.admin[0], "password": self.admin[1]} if self.admin else {}
        return RedisSettings(
            mode=self.mode, host=self.host, port=self.ports[0], startup_nodes=seeds, **{**creds, **overrides}
        )

    def client(self, port: int | None = None, **kw: Any):
        """A redis-py client of one node (the first by default), as the admin when there is one."""
        import redis

        user, password = self.admin or (None, None)
        return redis.Redis(host=self.host, port=port or self.ports[0], username=user, password=password, **kw)

    def save(self) -> None:
        state = {"mode": self.mode, "host": self.host, "ports": self.ports, "pids": self.pids}
        tmp = self.work_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.work_dir / STATE_FILE)

    @classmethod
    def load(cls, work_dir: Path) -> LocalRedis | None:
        path = Path(work_dir) / STATE_FILE
        if not path.is_file():
            return None
        s = json.loads(path.read_text())
        return cls(Path(work_dir), s["mode"], list(s["ports"]), list(s["pids"]), s.get("host", "127.0.0.1"))


# -- ports ----------------------------------------------------------------------------------------
def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int, cluster_bus: bool = False, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free loopback ports (and free bus ports port+10000 when ``cluster_bus``)."""
    out: list[int] = []
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port in out or (cluster_bus and (port + 10000 > 65535 or not _port_free(port + 10000, host))):
            continue
        out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError(f"could not find {n} free ports on {host}")


# -- one node -------------------------------------------------------------------------------------
def _write_conf(
    node_dir: Path, port: int, cluster: bool, persist: bool, extra: dict[str, str] | None
) -> Path:
    conf = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(node_dir),
        "pidfile": str(node_dir / "redis.pid"),
        "logfile": str(node_dir / "redis.log"),
        "daemonize": "no",
        # persist: the append-only file, fsynced every second (a kill -9 loses at most ~1 s of writes,
        # and the hourly reconcile republishes them from the embedding shards), plus RDB snapshots
        "appendonly": "yes" if persist else "no",
        "appendfsync": "everysec",
        "save": '"3600 1 300 100 60 10000"' if persist else '""',
        **MEMORY_CONF,
    }
    if cluster:
        conf |= {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": "5000",
        }
    conf |= extra or {}
    path = node_dir / "redis.conf"
    path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    return path


def _spawn(node_dir: Path, conf: Path, server_bin: str) -> int:
    binary = shutil.which(server_bin) or server_bin
    if not Path(binary).exists():
        raise FileNotFoundError(
            f"redis-server binary {server_bin!r} not found: install redis-server (apt install redis-server)"
        )
    with open(node_dir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [binary, str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a redis-server answers on host:port: any reply to a plain PING, including NOAUTH (it is up,
    and wants credentials), except LOADING. One raw round trip: no client, no retries, no credentials."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+", b"-")) and not reply.startswith(b"-LOADING")


def _wait_ready(node_dir: Path, pid: int, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(host, port):
            return
        if not _alive(pid):
            break
        time.sleep(0.05)
    tail = ""
    for name in ("redis.log", "stdout.log"):
        f = node_dir / name
        if f.is_file():
            tail += f.read_text(errors="replace")[-800:]
    raise RuntimeError(
        f"redis-server on port {port} did not become ready within {timeout}s; log tail:\n{tail}"
    )


def _start_nodes(
    work_dir: Path,
    ports: list[int],
    cluster: bool,
    persist: bool,
    server_bin: str,
    extra: dict[str, str] | None,
    timeout: float,
) -> list[int]:
    pids = []
    for port in ports:
        node_dir = work_dir / f"node-{port}"
        if cluster and (node_dir / "nodes.conf").exists() and not persist:
            (node_dir / "nodes.conf").unlink()  # a throw-away cluster starts fresh
        node_dir.mkdir(parents=True, exist_ok=True)
        pids.append(_spawn(node_dir, _write_conf(node_dir, port, cluster, persist, extra), server_bin))
    try:
        for port, pid in zip(ports, pids):
            _wait_ready(work_dir / f"node-{port}", pid, "127.0.0.1", port, timeout)
    except BaseException:
        for pid in pids:
            _terminate(pid, 5.0)
        raise
    return pids


# -- public API -----------------------------------------------------------------------------------
def _acl_setup(
    work_dir: Path, acl: dict[str, tuple[str, object]] | None, extra_conf: dict[str, str] | None
) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
    """Write ``<work_dir>/users.acl`` for ``acl`` (default user off) and return the config to load it
    and the admin's credentials; nothing when ``acl`` is None."""
    if acl is None:
        return extra_conf, None
    from store.acl import _secret, acl_file

    admins = [(name, _secret(pw)) for name, (role, pw) in acl.items() if role == "admin"]
    if not admins:
        raise ValueError("a local server with ACL users needs one of role 'admin' (the default user is off)")
    path = work_dir / "users.acl"
    path.write_text(acl_file(acl))
    path.chmod(0o600)
    return {**(extra_conf or {}), "aclfile": str(path)}, admins[0]


def _load_functions(server: LocalRedis) -> None:
    """The admin loads the store's function library on every node (every node is a master here)."""
    from store import functions

    for port in server.ports:
        functions.load(server.client(port, socket_timeout=5))


def start_single(
    work_dir: Path,
    port: int | None = None,
    *,
    persist: bool = False,
    server_bin: str = "redis-server",
    extra_conf: dict[str, str] | None = None,
    timeout: float = 15.0,
    acl: dict[str, tuple[str, object]] | None = None,
) -> LocalRedis:
    """Start one redis-server on 127.0.0.1 (a free port when ``port`` is None) and wait until it answers.

    ``acl``: ACL users (store.acl roles; one admin), the default user off, the function library loaded.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _refuse_running(work_dir)
    extra_conf, admin = _acl_setup(work_dir, acl, extra_conf)
    for attempt in range(3):
        ports = [port] if port else free_ports(1)
        if port and not _port_free(port):
            raise ValueError(
                f"port {port} on 127.0.0.1 is already in use "
                "(is another redis-server running? `soe redis status`)"
            )
        try:
            pids = _start_nodes(work_dir, ports, False, persist, server_bin, extra_conf, timeout)
            break
        except RuntimeError:
            if port or attempt == 2:  # a chosen free port can be taken by a concurrent run: pick again
                raise
    server = LocalRedis(work_dir, "single", ports, pids, admin=admin)
    server.save()
    if admin:
        try:
            _load_functions(server)
        except BaseException:
            stop(work_dir)
            raise
    return server


def start_cluster(
    work_dir: Path,
    ports: list[int] | None = None,
    *,
    masters: int = 3,
    persist: bool = False,
    server_bin: str = "redis-server",
    extra_conf: dict[str, str] | None = None,
    timeout: float = 30.0,
    acl: dict[str, tuple[str, object]] | None = None,
) -> LocalRedis:
    """Start ``masters`` cluster-enabled nodes, join them into one cluster (no replicas), wait for
    state ok. ``acl``: as for `start_single`."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _refuse_running(work_dir)
    extra_conf, admin = _acl_setup(work_dir, acl, extra_conf)
    if masters < 3:
        raise ValueError("Redis Cluster needs at least 3 masters")
    for attempt in range(3):
        chosen = list(ports) if ports else free_ports(masters, cluster_bus=True)
        if len(chosen) != masters:
            raise ValueError(f"need {masters} ports, got {chosen}")
        try:
            pids = _start_nodes(work_dir, chosen, True, persist, server_bin, extra_conf, timeout)
            break
        except RuntimeError:
            if ports or attempt == 2:
                raise
    server = LocalRedis(work_dir, "cluster", chosen, pids, admin=admin)
    server.save()
    try:
        _create_cluster(server, timeout)
        if admin:
            _load_functions(server)
    except BaseException:
        stop(work_dir)
        raise
    return server


def _create_cluster(server: LocalRedis, timeout: float) -> None:
    """Assign the 16384 slots evenly and let the nodes meet (what `redis-cli --cluster create` does)."""

    nodes = [server.client(p, socket_timeout=5) for p in server.ports]
    n = len(nodes)
    assigned = [int(node.cluster("info").get("cluster_slots_assigned", 0)) for node in nodes]
    if any(assigned) and not all(assigned):
        raise ValueError(
            f"{server.work_dir} holds cluster state (nodes.conf) for other ports than "
            f"{server.ports}: start with the same ports as before, or remove the node-* "
            "directories"
        )
    if not any(assigned):  # a new cluster (a restarted persistent one keeps its nodes.conf)
        for i, node in enumerate(nodes):
            lo, hi = i * 16384 // n, (i + 1) * 16384 // n - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
        for node in nodes[1:]:
            node.execute_command("CLUSTER MEET", server.host, server.ports[0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [node.cluster("info") for node in nodes]
        # every node must know the others and agree on the slot map before clients use it
        if all(
            i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == n for i in infos
        ) and all(len(node.execute_command("CLUSTER SLOTS")) == n for node in nodes):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"local Redis Cluster on ports {server.ports} did not reach state ok within {timeout}s"
    )


def _refuse_running(work_dir: Path) -> None:
    existing = LocalRedis.load(work_dir)
    if existing and any(_alive(pid) for pid in existing.pids):
        raise ValueError(
            f"a local Redis ({existing.mode}, ports {existing.ports}) already runs from "
            f"{work_dir}; `soe redis stop` first"
        )


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(work_dir: Path, timeout: float = 10.0) -> dict:
    """Stop the servers recorded in ``work_dir`` (SIGTERM, then SIGKILL after ``timeout``)."""
    server = LocalRedis.load(Path(work_dir))
    if server is None:
        return {"stopped": [], "message": f"no local Redis recorded in {work_dir}"}
    stopped = []
    for port, pid in zip(server.ports, server.pids):
        if _alive(pid):
            _terminate(pid, timeout)
            stopped.append(port)
    (Path(work_dir) / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "mode": server.mode}


def status(work_dir: Path) -> dict:
    """Mode, ports and, per node, whether its process is alive and it answers PING."""
    server = LocalRedis.load(Path(work_dir))
    if server is None:
        return {"running": False, "work_dir": str(work_dir)}
    nodes = [
        {"port": p, "pid": pid, "alive": _alive(pid), "ping": ping(server.host, p)}
        for p, pid in zip(server.ports, server.pids)
    ]
    return {
        "running": all(n["ping"] for n in nodes),
        "mode": server.mode,
        "work_dir": str(work_dir),
        "nodes": nodes,
    }
