"""The fast read path: many HMGETs packed into one RESP buffer per node and sent on one connection.

redis-py's pipeline spends ~10-20 µs of Python per command (encoding, packing, bookkeeping, parsing);
a 100-user lookup is ~100 HMGETs (one per bucket), so that alone costs 1-2 ms. Here the
request bytes are built directly (``*N $5 HMGET $len key $len field ...``, the RESP protocol), sent
with one ``sendall`` per node on a connection each thread holds (`HeldConnections`), and the replies
are read with redis-py's own parser (hiredis when installed). On a cluster the commands are split
by the node that owns each key's slot; every node gets its buffer before any reply is read, so the
nodes work in parallel. A MOVED/ASK reply (the
cluster is resharding) raises `Redirected`, and the caller falls back to redis-py's cluster
pipeline, which follows redirects. `store.backends.redis` keeps that pipeline as the reference
path; ``redis.read_path`` chooses between them and tests/test_store_read_paths.py compares both.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

_HMGET = b"$5\r\nHMGET\r\n"


class Redirected(Exception):
    """A cluster node answered MOVED/ASK: the slot map changed; use the redirect-following path."""


def pack_hmgets(commands: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """RESP bytes of ``HMGET key field...`` for each (key, fields)."""
    parts = []
    for key, fields in commands:
        k = key.encode()
        parts.append(b"*%d\r\n%s$%d\r\n%s\r\n" % (len(fields) + 2, _HMGET, len(k), k))
        parts.extend(b"$%d\r\n%s\r\n" % (len(f), f.encode()) for f in fields)
    return b"".join(parts)


def _read(conn, n: int) -> list:
    """n replies; every reply is read even after an error reply, so the connection stays in sync."""
    from redis.exceptions import AskError, MovedError, ResponseError

    replies: list = []
    error: Exception | None = None
    for _ in range(n):
        try:
            replies.append(conn.read_response())
        except (MovedError, AskError) as exc:
            error = error or Redirected(str(exc))
            replies.append(None)
        except ResponseError as exc:  # e.g. NOPERM, WRONGTYPE: re-raised once all replies are read
            error = error or exc
            replies.append(None)
    if error is not None:
        raise error
    return replies


def hmget_many(client, commands: Sequence[tuple[str, Sequence[str]]]) -> list[list]:
    """Run the HMGETs on the held connection of ``client`` (a redis.Redis); one reply list each."""
    return hmget_by_node([(client, list(range(len(commands))))], commands)


class HeldConnections:
    """One connection per (client, thread), taken from the client's pool once and kept.

    Checking a connection out of redis-py's pool and back for every lookup costs a lock and a
    ``select`` syscall; on a busy machine that doubles a lookup's CPU and its p99. A held connection
    reconnects by itself after an error (redis-py connects on the next send when it has no socket).
    """

    def __init__(self):
        self._local = threading.local()

    def get(self, client):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked child must not share sockets
            local.pid, local.held = os.getpid(), _Held()
        conn = local.held.conns.get(client)
        if conn is None:
            conn = local.held.conns[client] = client.connection_pool.get_connection()
        return conn


class _Held:
    """A thread's held connections; handed back to their pools when the thread ends."""

    def __init__(self):
        self.conns: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # client -> connection

    def __del__(self):
        for client, conn in list(self.conns.items()):
            try:  # (no contextlib here: at interpreter shutdown module globals may already be None)
                client.connection_pool.release(conn)
            except Exception:  # interpreter shutdown or a closed pool: nothing to return
                pass


HELD = HeldConnections()


def hmget_by_node(
    routes: list[tuple[Any, list[int]]], commands: Sequence[tuple[str, Sequence[str]]]
) -> list[list]:
    """``routes``: (redis.Redis of a node, indices of its commands). Send to every node, then read."""
    if not commands:
        return []
    out: list = [None] * len(commands)
    conns = []
    try:
        for client, idx in routes:
            conn = HELD.get(client)
            conns.append(conn)
            conn.send_packed_command([pack_hmgets([commands[i] for i in idx])], check_health=False)
    except BaseException:
        for conn in conns:  # a send failed: start these connections afresh
            conn.disconnect()
        raise
    from redis.exceptions import ResponseError

    error = None
    for k, ((_, idx), conn) in enumerate(zip(routes, conns)):
        try:
            for i, reply in zip(idx, _read(conn, len(idx))):
                out[i] = reply
        except (ResponseError, Redirected) as exc:  # all of this node's replies were read: still in sync
            error = error or exc
        except BaseException:
            for other in conns[k:]:  # replies left unread: start these connections afresh
                other.disconnect()
            raise
    if error is not None:
        raise error
    return out


def cluster_routes(cluster, keys: Sequence[str]) -> list[tuple[object, list[int]]]:
    """Group command indices by the primary that owns each key's slot (redis-py's cached slot map)."""
    by_node: dict[str, tuple[object, list[int]]] = {}
    for i, key in enumerate(keys):
        node = cluster.get_node_from_key(key)
        if node.redis_connection is None:
            cluster.nodes_manager.create_redis_connections([node])
        by_node.setdefault(node.name, (node.redis_connection, []))[1].append(i)
    return list(by_node.values())
