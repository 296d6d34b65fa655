"""Two Redis ACL users with least privilege: a writer for the pipeline, a reader for rankers.

* **writer** (publish, graph, forget, pointer, cleanup): read and write commands on ``<ns>:*`` keys
  only, scripts by EVALSHA/SCRIPT LOAD (the conditional upsert), nothing dangerous (no FLUSHALL,
  CONFIG, KEYS, DEBUG, SHUTDOWN, ACL ...).
* **reader** (store.client, the service): HGET/HMGET/HGETALL on the keys a lookup needs (vectors,
  neighbour lists, recent positives, namespace metadata, the pointer), read-only (``%R~``); no writes,
  deletes or scripts.

Both may run the connection and cluster-topology commands a client needs (HELLO, PING, COMMAND,
CLUSTER SLOTS/SHARDS/NODES, READONLY). `apply_acl` installs the users on every node (ACLs are per
node, also in a cluster); `acl_file` renders them for an ``aclfile`` with SHA-256 password hashes,
so no clear-text password is ever written. Passwords come from config/env, never from code or logs.
"""

from __future__ import annotations

import hashlib

from store.settings import RedisSettings

# Connection and topology commands every client needs. (redis-py's CLIENT SETINFO on connect is not
# granted: it does not exist before Redis 7.2, and redis-py ignores its refusal.)
CLIENT_COMMANDS = ["+ping", "+hello", "+auth", "+client|setname", "+command",
                   "+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|info", "+readonly"]


def reader_rules(namespace: str = "soe") -> list[str]:
    keys = [f"%R~{namespace}:{p}" for p in ("v:*", "n:*", "p:*", "meta:*", "pointer")]
    return ["resetkeys", "resetchannels", *keys, "-@all", "+hget", "+hmget", "+hgetall", *CLIENT_COMMANDS]


def writer_rules(namespace: str = "soe") -> list[str]:
    return ["resetkeys", "resetchannels", f"~{namespace}:*", "-@all", "+@read", "+@write", "-@dangerous",
            "-@scripting", "+evalsha", "+script|load", "+script|exists", *CLIENT_COMMANDS]


def _secret(password) -> str:
    return password.get_secret_value() if hasattr(password, "get_secret_value") else str(password)


def user_rules(role: str, password, namespace: str = "soe") -> list[str]:
    """ACL SETUSER arguments for ``role`` ("writer" | "reader"); the password goes in as its SHA-256."""
    rules = {"writer": writer_rules, "reader": reader_rules}[role](namespace)
    digest = hashlib.sha256(_secret(password).encode()).hexdigest()
    return ["reset", "on", f"#{digest}", *rules]


def acl_file(users: dict[str, tuple[str, object]], namespace: str = "soe", default_password=None) -> str:
    """An ``aclfile`` text: ``{"soe-writer": ("writer", pw), "soe-reader": ("reader", pw)}``.

    ``default_password`` locks the default user (admin) behind a password; None leaves it as is.
    """
    lines = []
    if default_password is not None:
        digest = hashlib.sha256(_secret(default_password).encode()).hexdigest()
        lines.append(f"user default on #{digest} ~* &* +@all")
    for name, (role, password) in users.items():
        lines.append(" ".join(["user", name, *user_rules(role, password, namespace)[1:]]))
    return "\n".join(lines) + "\n"


def apply_acl(admin: RedisSettings, users: dict[str, tuple[str, object]],
              namespace: str = "soe") -> list[str]:
    """Create/replace the users on every node of the deployment ``admin`` (settings with admin rights)."""
    import redis

    from store.backends.redis import connect

    client = connect(admin)
    nodes = ([(n.host, n.port) for n in client.get_nodes()] if admin.mode == "cluster"
             else [(admin.host, admin.port)])
    for host, port in nodes:
        node = redis.Redis(host=host, port=port, username=admin.username, password=admin.secret(),
                           socket_timeout=admin.socket_timeout_s)
        for name, (role, password) in users.items():
            node.execute_command("ACL", "SETUSER", name, *user_rules(role, password, namespace))
    return [f"{h}:{p}" for h, p in nodes]
