"""Redis ACL users with least privilege: an admin, a writer for the pipeline, a reader for rankers.

* **admin** (setup only: ACLs, the function library, flushing a test server): every command and key.
* **writer** (publish, graph, forget, pointer, cleanup): read and write commands on ``<ns>:*`` keys
  only, and the store's server-side code only through ``FCALL``/``FCALL_RO`` of the ``soe`` function
  library an admin loaded (store.functions); no Lua of its own (no EVAL/EVALSHA, SCRIPT, FUNCTION),
  nothing dangerous (no FLUSHALL, CONFIG, KEYS, DEBUG, SHUTDOWN, ACL ...).
* **reader** (store.client, the service): HGET/HMGET/HGETALL on the keys a lookup needs (vectors,
  neighbour lists, recent positives, namespace metadata, the pointer), read-only (``%R~``); no writes,
  deletes, scripts or functions.
* the **default** user, which every connection is before AUTH (``on nopass +@all`` out of the box), is
  switched off (``user default off``, no password, no rights) unless it is the admin, and then it has
  a password: after `apply_acl` or with an `acl_file` nobody reaches the server without credentials.

Every client may run the connection and cluster-topology commands it needs (HELLO, PING, COMMAND,
CLUSTER SLOTS/SHARDS/NODES, READONLY). `apply_acl` installs the users and the function library on
every node (ACLs are per node, also in a cluster) and locks the default user last; `acl_file`
renders an ``aclfile`` with SHA-256 password hashes, so no clear-text password is ever written.
Passwords come from config/env or prompts, never from code or logs.
"""

from __future__ import annotations

import hashlib

from store.functions import Limits
from store.settings import RedisSettings

# Connection and topology commands every client needs. (redis-py's CLIENT SETINFO on connect is not
# granted: it does not exist before Redis 7.2, and redis-py ignores its refusal.)
CLIENT_COMMANDS = [
    "+ping",
    "+hello",
    "+auth",
    "+client|setname",
    "+command",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+cluster|info",
    "+readonly",
]
ROLES = ("admin", "writer", "reader")
DEFAULT_OFF = ["off", "resetpass", "resetkeys", "resetchannels", "-@all"]  # the default user, locked

Users = dict[str, tuple[str, object]]  # user name -> (role, password)


def reader_rules(namespace: str = "soe") -> list[str]:
    keys = [f"%R~{namespace}:{p}" for p in ("v:*", "n:*", "p:*", "meta:*", "pointer")]
    return ["resetkeys", "resetchannels", *keys, "-@all", "+hget", "+hmget", "+hgetall", *CLIENT_COMMANDS]


def writer_rules(namespace: str = "soe") -> list[str]:
    return [
        "resetkeys",
        "resetchannels",
        f"~{namespace}:*",
        "-@all",
        "+@read",
        "+@write",
        "-@dangerous",
        "-@scripting",
        "+fcall",
        "+fcall_ro",
        *CLIENT_COMMANDS,
    ]


def admin_rules(namespace: str = "soe") -> list[str]:
    return ["~*", "&*", "+@all"]


def _secret(password) -> str:
    return password.get_secret_value() if hasattr(password, "get_secret_value") else str(password)


def user_rules(role: str, password, namespace: str = "soe") -> list[str]:
    """ACL SETUSER arguments for ``role`` (admin | writer | reader); the password goes in as its SHA-256."""
    if role not in ROLES:
        raise ValueError(f"ACL role must be one of {ROLES}, got {role!r}")
    rules = {"admin": admin_rules, "writer": writer_rules, "reader": reader_rules}[role](namespace)
    digest = hashlib.sha256(_secret(password).encode()).hexdigest()
    return ["reset", "on", f"#{digest}", *rules]


def _default_rules(users: Users, namespace: str) -> list[str]:
    """The default user's rules: the admin's (with its password) when it is the admin, else locked."""
    if "default" in users:
        role, password = users["default"]
        if role != "admin":
            raise ValueError("the default user can only be the admin (with a password), or be switched off")
        return user_rules("admin", password, namespace)
    return DEFAULT_OFF


def acl_file(users: Users, namespace: str = "soe", default_password=None) -> str:
    """An ``aclfile`` text, e.g. ``{"soe-admin": ("admin", pw), "soe-writer": ("writer", pw), ...}``.

    Its first line is the default user: the admin with a password when ``default_password`` is given
    (or ``users`` holds ``"default"``), else ``user default off`` and an admin user must be among
    ``users`` (a file that locks everyone out is refused).
    """
    if default_password is not None:
        users = {"default": ("admin", default_password), **{n: u for n, u in users.items() if n != "default"}}
    if not any(role == "admin" for role, _ in users.values()):
        raise ValueError(
            "an aclfile needs an admin: a user of role 'admin', or a password for the default "
            "user (it is switched off otherwise)"
        )
    default = _default_rules(users, namespace)
    lines = [" ".join(["user", "default", *(default[1:] if default[0] == "reset" else default)])]
    for name, (role, password) in users.items():
        if name != "default":
            lines.append(" ".join(["user", name, *user_rules(role, password, namespace)[1:]]))
    return "\n".join(lines) + "\n"


def apply_acl(
    admin: RedisSettings, users: Users, namespace: str = "soe", *, limits: Limits | None = None
) -> list[str]:
    """On every node of the deployment ``admin`` (settings of a user with admin rights): create or
    replace ``users``, load the ``soe`` function library (``limits``: those of ``admin``), then lock
    the default user (off, or the admin's password when ``users`` holds ``"default"``). The nodes.

    Refused when nobody would be left to administer: no admin among ``users`` while ``admin``
    itself connects as the default user.
    """
    import redis

    from store import functions
    from store.backends.redis import connect

    has_admin = any(role == "admin" for role, _ in users.values())
    if not has_admin and admin.username in (None, "default"):
        raise ValueError(
            "refusing to switch the default user off without another admin: add an admin "
            "user (soe redis acl --admin NAME), or connect as an existing admin user"
        )
    default = _default_rules(users, namespace)
    src = functions.library_source(limits or Limits.of(admin))
    client = connect(admin)
    nodes = (
        [(n.host, n.port) for n in client.get_nodes()]
        if admin.mode == "cluster"
        else [(admin.host, admin.port)]
    )
    for host, port in nodes:
        node = redis.Redis(
            host=host,
            port=port,
            username=admin.username,
            password=admin.secret(),
            socket_timeout=admin.socket_timeout_s,
        )
        for name, (role, password) in users.items():
            if name != "default":
                node.execute_command("ACL", "SETUSER", name, *user_rules(role, password, namespace))
        if node.execute_command("ROLE")[0] in (b"master", "master"):
            node.execute_command("FUNCTION", "LOAD", "REPLACE", src)  # replicas get it by replication
        node.execute_command("ACL", "SETUSER", "default", *default)  # last: this connection stays open
    return [f"{h}:{p}" for h, p in nodes]
