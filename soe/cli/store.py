"""`soe` commands of the vector store: publish, lookup, forget, models ..., redis start|stop|status|acl,
redis functions load|status."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from core.progress import progress
from soe.cli.support import echo_json, friendly_errors, models_app, settings

redis_app = typer.Typer(
    help="A local redis-server (or a 3-master cluster) under <data root>/redis/; "
    "ACL users and the store's function library on any Redis.",
    no_args_is_help=True,
)
functions_app = typer.Typer(
    help="The store's Redis function library 'soe' (loaded by an admin).", no_args_is_help=True
)
redis_app.add_typer(functions_app, name="functions")


def redis_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Unreachable Redis / bad credentials: one clear line and exit 2 (no traceback, no secrets)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        # redis-py's messages name hosts, ports and users, never passwords. AuthenticationError is a
        # ConnectionError: it comes first
        except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            msg = f"Redis refused the credentials or the command ({exc}); check SOE_REDIS__USERNAME/PASSWORD"
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            msg = (
                f"cannot reach Redis ({exc}); start a local one with `soe redis start` or set "
                "SOE_REDIS__HOST/PORT"
            )
        except redis.exceptions.RedisClusterException as exc:
            msg = f"Redis Cluster error ({exc}); check redis.mode and redis.startup_nodes"
        except redis.exceptions.ResponseError as exc:  # e.g. OOM: nothing half-done is visible
            msg = f"Redis refused a command ({exc}); fix the cause and rerun (publishing is idempotent)"
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)

    return wrapper


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""
    app.command("publish")(publish_cmd)
    app.command("lookup")(lookup_cmd)
    app.command("forget")(forget_cmd)
    app.add_typer(redis_app, name="redis")


@friendly_errors
@redis_errors
def publish_cmd(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model version whose embeddings to publish."),
    as_of: str = typer.Option(..., "--as-of", help="as_of of the embeddings (ISO 8601 or YYYYMMDDTHHMMZ)."),
    shard: int | None = typer.Option(None, "--shard", help="Publish only this shard (default: every shard)."),
) -> None:
    """Upsert a model's embeddings for one as_of into Redis (never over a newer as_of; idempotent)."""
    from store.publish import publish_embeddings

    with progress(None, "publishing", "vec") as bar:
        s = settings(ctx)
        echo_json(publish_embeddings(s.redis, s.layout(), model, as_of, shard, on_rows=bar.update))


@friendly_errors
@redis_errors
def lookup_cmd(
    ctx: typer.Context,
    user_id: int = typer.Argument(..., help="The user id to look up."),
    model: str | None = typer.Option(
        None, "--model", help="Read this model namespace instead of the current one."
    ),
) -> None:
    """Print a user's vector (and neighbour list, if any) as the rankers see it."""
    from datetime import UTC, datetime

    from store.client import LookupClient

    client = LookupClient(settings(ctx).redis, model=model)
    res = client.lookup([user_id])
    out = {"user_id": user_id, "model": res.model, "found": bool(res.found[0])}
    if res.found[0]:
        out["as_of"] = datetime.fromtimestamp(int(res.as_of[0]) / 1000, tz=UTC).isoformat()
        out["vector"] = [round(float(x), 5) for x in res.vectors[0]]
    lists = client.neighbours([user_id])[0]
    if lists is not None:
        out["neighbours"] = {"ids": lists[0].tolist(), "scores": [round(float(s), 4) for s in lists[1]]}
    echo_json(out)
    if not res.found[0]:
        raise typer.Exit(code=1)


@friendly_errors
@redis_errors
def forget_cmd(
    ctx: typer.Context,
    user_ids: list[int] | None = typer.Argument(None, metavar="[USER]...", help="User ids to forget."),
    users: Path | None = typer.Option(
        None, "--users", help="File of user ids: one per line, or Parquet with user_id."
    ),
) -> None:
    """Forget users everywhere, for good: a durable tombstone first (every stage honours it, so nothing
    re-creates them), then their vectors, neighbour lists and positives in the store, and every other
    user's list in the store and the newest graph that named them. Older snapshots on disk are
    rewritten by the next retention (docs/operations.md, "Forget")."""
    import numpy as np

    from store.forget import forget_everywhere, read_user_ids

    ids = [np.asarray(user_ids or [], dtype=np.int64)] + ([read_user_ids(users)] if users is not None else [])
    chosen = np.concatenate(ids)
    if not len(chosen):
        raise ValueError("no user to forget: give user ids (soe forget 17 42) or --users FILE")
    s = settings(ctx)
    echo_json(forget_everywhere(s.redis, s.layout(), chosen))


@models_app.command("current")
@friendly_errors
@redis_errors
def models_current(ctx: typer.Context) -> None:
    """Print the pointer (current, previous, switched_at) and every namespace."""
    from store.backends import open_store
    from store.models import list_models

    store = open_store(settings(ctx).redis)
    echo_json({"pointer": store.pointer(), "models": list_models(store)})


@models_app.command("switch")
@friendly_errors
@redis_errors
def models_switch(
    ctx: typer.Context, version: str = typer.Argument(..., help="The published model to make current.")
) -> None:
    """Atomically point every reader at VERSION (the old current becomes previous)."""
    from store.models import switch_current

    echo_json(switch_current(settings(ctx).redis, version))


@models_app.command("rollback")
@friendly_errors
@redis_errors
def models_rollback(ctx: typer.Context) -> None:
    """Swap current and previous."""
    from store.models import rollback

    echo_json(rollback(settings(ctx).redis))


@models_app.command("cleanup")
@friendly_errors
@redis_errors
def models_cleanup(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed."),
    include_pending: bool = typer.Option(
        False, "--include-pending", help="Also drop namespaces created after the last switch."
    ),
) -> None:
    """Drop model namespaces other than current and previous."""
    from store.models import cleanup

    echo_json(cleanup(settings(ctx).redis, dry_run=dry_run, include_pending=include_pending))


def _work_dir(ctx: typer.Context) -> Path:
    return Path(settings(ctx).data.root) / "redis"


@redis_app.command("start")
@friendly_errors
def redis_start(
    ctx: typer.Context,
    cluster: bool = typer.Option(
        False, "--cluster", help="Start a local 3-master Redis Cluster (ports PORT..PORT+2)."
    ),
    port: int | None = typer.Option(
        None, "--port", help="Port (default: redis.port from the config; 0 = any free)."
    ),
    persist: bool = typer.Option(True, "--persist/--no-persist", help="RDB snapshots in the work dir."),
) -> None:
    """Start a local redis-server on 127.0.0.1 with the store's listpack settings."""
    from store import local_server

    port = settings(ctx).redis.port if port is None else port
    work = _work_dir(ctx)
    try:
        if cluster:
            server = local_server.start_cluster(
                work, [port, port + 1, port + 2] if port else None, persist=persist
            )
        else:
            server = local_server.start_single(work, port or None, persist=persist)
    except RuntimeError as exc:  # did not come up: the message carries the server log's tail
        raise ValueError(str(exc)) from None
    echo_json({"mode": server.mode, "ports": server.ports, "pids": server.pids, "work_dir": str(work)})


@redis_app.command("stop")
@friendly_errors
def redis_stop(ctx: typer.Context) -> None:
    """Stop the local redis-server(s) started by `soe redis start`."""
    from store import local_server

    echo_json(local_server.stop(_work_dir(ctx)))


@redis_app.command("status")
@friendly_errors
def redis_status(ctx: typer.Context) -> None:
    """Mode, ports and health of the local redis-server(s); exit 1 when not running."""
    from store import local_server

    st = local_server.status(_work_dir(ctx))
    echo_json(st)
    if not st["running"]:
        raise typer.Exit(code=1)


@redis_app.command("acl")
@friendly_errors
@redis_errors
def redis_acl(
    ctx: typer.Context,
    admin: str = typer.Option(
        "soe-admin",
        help="ACL user name of the admin ('default': the default user becomes the admin, with a password).",
    ),
    writer: str = typer.Option("soe-writer", help="ACL user name of the pipeline (writer)."),
    reader: str = typer.Option("soe-reader", help="ACL user name of the rankers (reader)."),
    admin_password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    writer_password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    reader_password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    file: Path | None = typer.Option(
        None, "--file", help="Write an aclfile (SHA-256 hashes) instead of applying."
    ),
) -> None:
    """Create the admin, writer and reader ACL users and load the function library on every node (as the
    configured admin), then switch the default user off (or give it the admin's password); or write an
    aclfile. Afterwards nobody connects without credentials: use the admin's for administration."""
    from store.acl import acl_file, apply_acl

    s = settings(ctx).redis
    users = {
        admin: ("admin", admin_password),
        writer: ("writer", writer_password),
        reader: ("reader", reader_password),
    }
    names = [admin, writer, reader]
    default_user = "admin (password)" if admin == "default" else "off"
    if file is not None:
        tmp = file.with_name(f".{file.name}.tmp")
        tmp.write_text(acl_file(users, s.namespace))
        tmp.chmod(0o600)
        tmp.replace(file)
        echo_json({"aclfile": str(file), "users": names, "default_user": default_user})
        return
    nodes = apply_acl(s, users, s.namespace)
    echo_json({"nodes": nodes, "users": names, "default_user": default_user, "functions": "soe"})


@functions_app.command("load")
@friendly_errors
@redis_errors
def functions_load(ctx: typer.Context) -> None:
    """FUNCTION LOAD REPLACE the 'soe' library on every master, with redis.max_dim/max_neighbours/
    max_positives compiled in (as the configured admin; writers may only FCALL it)."""
    from store import functions
    from store.backends.redis import connect

    s = settings(ctx).redis
    nodes = functions.load(connect(s), functions.Limits.of(s))
    echo_json(
        {
            "nodes": nodes,
            "library": functions.LIBRARY,
            "version": functions.LIBRARY_VERSION,
            **vars(functions.Limits.of(s)),
        }
    )


@functions_app.command("status")
@friendly_errors
@redis_errors
def functions_status(ctx: typer.Context) -> None:
    """The library's version and limits on every master (null where it is not loaded); exit 1 when a
    master lacks this code's version."""
    from store import functions
    from store.backends.redis import connect

    clients = functions.node_clients(connect(settings(ctx).redis))
    nodes = {name: functions.info(node) for name, node in clients}
    echo_json({"nodes": nodes, "expected_version": functions.LIBRARY_VERSION})
    if any((v or {}).get("version") != str(functions.LIBRARY_VERSION) for v in nodes.values()):
        raise typer.Exit(code=1)
