"""Running the DAGs on Airflow 3: ``airflow dags test`` in an isolated home, or a real deployment.

`AirflowHome` owns one directory: a SQLite metadata DB (``airflow db migrate`` once, a few seconds),
the ``soe.yaml`` the tasks load (the caller's Settings, dumped), and a log per run. Each run is one
``airflow dags test <dag> <logical date>`` subprocess: exactly what an operator types, tasks run in
that process one after another, no scheduler or webserver needed (main job, tests, bench).

For the cron data-interval timetable of ``soe_hourly``, ``airflow dags test soe_hourly T`` runs
the interval ``[T - 1h, T)``: the logical date is the run's ``as_of``.

`AirflowDeployment` is the same home run as a real Airflow 3 deployment on loopback: the API
server, the DAG processor, the scheduler and the triggerer, each its own process, on a PostgreSQL
metadata DB (`PostgresCluster`: a throw-away cluster from the Debian binaries, or any
``postgresql://`` URL). With the LocalExecutor the scheduler runs the tasks itself; with the
CeleryExecutor (a Redis broker URL) the tasks go to ``airflow celery worker`` processes, each serving
its own list of queues (`AirflowDeployment.start_worker`). The scheduler itself creates and runs the
DAG runs (scheduled, catch-up, asset-triggered, backfill); the helpers read them back through the REST
API (``/api/v2``) and wait on them with bounded timeouts. ``deploy/airflow/README.md`` documents it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from core.layout import utc

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
_FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+?), .*?state=(\w+)")


@dataclass
class RunResult:
    dag_id: str
    logical_date: str
    state: str  # "success" | "failed" | "unknown"
    returncode: int
    seconds: float
    log: Path  # the full output of the run

    @property
    def ok(self) -> bool:
        return self.state == "success" and self.returncode == 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class AirflowHome:
    def __init__(self, home: Path, settings, dags_folder: Path = DAGS_FOLDER):
        self.home = Path(home)
        self.dags_folder = Path(dags_folder)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config = self.home / "soe.yaml"
        self.write_settings(settings)

    def write_settings(self, settings) -> None:
        """The Settings every task of every run loads (``SOE_CONFIG``)."""
        self.config.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SOE_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "SOE_CONFIG": str(self.config),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        env.update(extra or {})
        return env

    def _airflow(
        self, *args: str, log: Path | None = None, env: dict[str, str] | None = None, timeout: float = 1800
    ) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).with_name("airflow")), *args]
        out = open(log, "w") if log else subprocess.PIPE
        try:
            return subprocess.run(
                cmd,
                env=env or self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                cwd=self.home,
            )
        finally:
            if log:
                out.close()

    def migrate(self) -> float:
        """``airflow db migrate`` once per home; returns the seconds it took (0 when already done)."""
        marker = self.home / ".migrated"
        if marker.is_file():
            return 0.0
        t0 = time.perf_counter()
        proc = self._airflow("db", "migrate", log=self.home / "migrate.log", timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed, see {self.home / 'migrate.log'}")
        marker.write_text("ok")
        return round(time.perf_counter() - t0, 3)

    def dags_test(
        self,
        dag_id: str,
        logical_date: datetime | str,
        conf: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 1800,
    ) -> RunResult:
        """``airflow dags test dag_id logical_date [-c conf]``; the output goes to a log file."""
        self.migrate()
        when = utc(logical_date).isoformat()
        logs = self.home / "runs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{dag_id}-{utc(logical_date):%Y%m%dT%H%M}-{time.time_ns()}.log"
        args = ["dags", "test", dag_id, when] + (["-c", json.dumps(conf)] if conf else [])
        t0 = time.perf_counter()
        proc = self._airflow(*args, log=log, env=self.env(extra_env), timeout=timeout)
        seconds = round(time.perf_counter() - t0, 3)
        found = _FINISHED.findall(log.read_text(errors="replace"))
        state = next((s for d, s in reversed(found) if d == dag_id), "unknown")
        return RunResult(dag_id, when, state, proc.returncode, seconds, log)


# -- a real deployment: API server, DAG processor, scheduler, triggerer (+ Celery workers) ------------------
COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")  # start order; stopped in reverse
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
FINISHED = ("success", "failed")  # terminal DAG run states


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The PostgreSQL server binaries (initdb, pg_ctl, createdb): next to ``initdb`` on PATH, else the newest
    ``/usr/lib/postgresql/<major>/bin`` (Debian's layout); None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    return max(dirs, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0) if dirs else None


class PostgresCluster:
    """A throw-away PostgreSQL cluster on loopback: the metadata DB of a test or local Airflow deployment.

    ``initdb`` + ``pg_ctl`` from the server binaries, in a fresh directory under the system temp dir, on a
    free port, listening on 127.0.0.1 only with trust authentication, durability off (fsync,
    synchronous_commit: the data is thrown away). PostgreSQL refuses to run as root, so under root the
    cluster belongs to the ``postgres`` system user of the Debian package (``runuser -u postgres``);
    otherwise to the caller.
    """

    def __init__(
        self,
        port: int | None = None,
        user: str = "airflow",
        database: str = "airflow",
        owner: str | None = None,
    ):
        self.bindir = postgres_bindir()
        self.port = port or free_port()
        self.user, self.database = user, database
        self.owner = owner or ("postgres" if os.geteuid() == 0 else None)
        self.root: Path | None = None

    @staticmethod
    def unavailable(owner: str | None = None) -> str | None:
        """Why a cluster cannot be started here (None: it can)."""
        if postgres_bindir() is None:
            return "no PostgreSQL server binaries (apt-get install postgresql)"
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam(owner or "postgres")
            except KeyError:
                return f"running as root and there is no {owner or 'postgres'!r} user to own the cluster"
            if shutil.which("runuser") is None:
                return "running as root without runuser"
        return None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow connects with (psycopg2; Airflow derives the asyncpg one)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        if self.bindir is None:
            raise RuntimeError(self.unavailable(self.owner))
        cmd = [str(self.bindir / tool), *args]
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {output}")
        return proc

    def start(self, timeout: float = 120) -> PostgresCluster:
        reason = self.unavailable(self.owner)
        if reason:
            raise RuntimeError(f"cannot start PostgreSQL: {reason}")
        self.root = Path(tempfile.mkdtemp(prefix="soe-pg-"))
        try:
            if self.owner:
                shutil.chown(self.root, user=self.owner)
            data = self.root / "data"
            self._run(
                "initdb",
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
            opts = (
                f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            self._run(
                "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                opts,
                "start",
                timeout=timeout + 10,
            )
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        log = self.root / "postgres.log" if self.root else None
        if log is None or not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; safe to call twice."""
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").is_file():
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.root / "data"),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                    timeout=60,
                )
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RunFailed(RuntimeError):
    """A DAG run the caller waited for finished in a state other than success."""


class AirflowDeployment(AirflowHome):
    """A real Airflow 3 deployment of the SoE DAGs on loopback, in one Airflow home.

    Components (one process each, logs in ``<home>/components/<name>.log``): the API server (REST API
    ``/api/v2`` and the Execution API the task processes talk to), the DAG processor, the scheduler, and
    the triggerer (``components`` may leave it out when no DAG defers). ``executor``: ``LocalExecutor``
    (the scheduler forks the task processes: ``parallelism`` at once) or ``CeleryExecutor``: the scheduler
    sends each task to its queue (the operator's ``queue``) on the Redis broker ``broker_url`` (result
    backend: the metadata DB), and ``airflow celery worker`` processes started with `start_worker` run
    them; a worker is not a component (`kill_worker` may kill one on purpose). The metadata DB is
    ``db_url`` (e.g. `PostgresCluster.url`); None = SQLite in the home (LocalExecutor only, one task at a
    time: tests only). The SoE settings reach every task through ``SOE_CONFIG`` (the home's ``soe.yaml``)
    plus ``extra_env`` (``SOE_*`` overrides, read by the DAG processor at parse time and by the tasks).

    Auth: the simple auth manager with ``all_admins`` (no login on loopback) and one JWT secret shared by
    the components. Pools named in the ``orchestration`` section (other than ``default_pool``) are created
    through the REST API before the scheduler starts: ``pools`` maps name -> slots.
    """

    def __init__(
        self,
        home: Path,
        settings,
        db_url: str | None = None,
        *,
        api_port: int | None = None,
        parallelism: int = 4,
        extra_env: dict[str, str] | None = None,
        pools: dict[str, int] | None = None,
        dags_folder: Path = DAGS_FOLDER,
        executor: str = "LocalExecutor",
        broker_url: str | None = None,
        components: tuple[str, ...] = COMPONENTS,
    ):
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
        if executor == "CeleryExecutor" and not (db_url and broker_url):
            raise ValueError("the CeleryExecutor needs a PostgreSQL metadata DB (db_url) and a broker_url")
        if not {"api-server", "dag-processor", "scheduler"} <= set(components) <= set(COMPONENTS):
            raise ValueError(f"components: the API server, DAG processor and scheduler, of {COMPONENTS}")
        super().__init__(home, settings, dags_folder)
        self.db_url = db_url
        self.executor, self.broker_url = executor, broker_url
        self.components = tuple(c for c in COMPONENTS if c in components)
        self.api_port = api_port or free_port()
        self.worker_log_port, self.triggerer_log_port = free_port(), free_port()
        self.parallelism = parallelism if db_url else 1
        self.extra_env = dict(extra_env or {})
        self.jwt_secret = secrets.token_urlsafe(32)
        o = settings.orchestration
        wanted = ((o.encode_pool, self.parallelism), (o.spark_pool, 1))
        self.pools = pools if pools is not None else {n: k for n, k in wanted if n != "default_pool"}
        self.logs = self.home / "components"
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, subprocess.Popen] = {}  # Celery workers by name (not components)
        self.orphans: list[Any] = []  # psutil.Process of tasks that outlived a killed worker (`kill_worker`)

    # -- configuration ------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = super().env()
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
                "AIRFLOW__LOGGING__TRIGGERER_LOG_SERVER_PORT": str(self.triggerer_log_port),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",  # look for new DAG files every 5 s
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            }
        )
        if self.db_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.db_url
        if self.executor == "CeleryExecutor" and self.broker_url and self.db_url:
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.db_url  # task states: the metadata DB
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> AirflowDeployment:
        """Migrate the DB, start the API server, create the pools, then the DAG processor, triggerer (if
        one of the components) and scheduler; returns once the health endpoint reports all of them healthy.
        On error, stops what it started. Celery workers are started apart (`start_worker`)."""
        try:
            self.migrate()
            self.logs.mkdir(exist_ok=True)
            self._spawn(
                "api-server",
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                "1",
            )
            self.wait_until(
                lambda: self.health().get("metadatabase", {}).get("status") == "healthy",
                timeout,
                "the API server",
            )
            for name, slots in self.pools.items():
                self.set_pool(name, slots)
            for name in self.components[1:]:
                self._spawn(name, name)
            self.wait_until(self.healthy, timeout, f"healthy {', '.join(self.components[1:])}")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, *args: str, into: dict[str, subprocess.Popen] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        try:
            (self.procs if into is None else into)[name] = subprocess.Popen(
                [str(Path(sys.executable).with_name("airflow")), *args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,  # its own process group (and session)
            )
        finally:
            log.close()

    # -- Celery workers -------------------------------------------------------------------------------------
    def start_worker(self, name: str, queues: list[str], concurrency: int = 1) -> subprocess.Popen:
        """``airflow celery worker -q <queues> -c <concurrency>`` as Celery node ``<name>@localhost``, in its
        own session and process group, log in ``<home>/components/<name>.log``; returns without waiting
        (`wait_worker_ready`). It serves no logs over HTTP: the task logs are files in this home."""
        if self.executor != "CeleryExecutor":
            raise RuntimeError("Celery workers need executor='CeleryExecutor'")
        self.logs.mkdir(parents=True, exist_ok=True)
        args = ["celery", "worker", "--queues", ",".join(queues), "--concurrency", str(concurrency)]
        args += ["--celery-hostname", f"{name}@localhost", "--skip-serve-logs"]
        args += ["--without-gossip", "--without-mingle"]  # no chatter between the nodes: nothing uses it
        self._spawn(name, *args, into=self.workers)
        return self.workers[name]

    def worker_ready(self, name: str) -> bool:
        """The worker logged Celery's ``ready.`` line (connected to the broker, consuming its queues);
        RuntimeError when it exited."""
        proc = self.workers[name]
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker {name} exited with {proc.returncode}:\n{self.log_tail(name)}")
        return f"{name}@localhost ready." in (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_worker_ready(self, name: str, timeout: float = 180) -> None:
        self.wait_until(lambda: self.worker_ready(name), timeout, f"celery worker {name}", poll=0.5)

    def worker_tree(self, name: str) -> list[int]:
        """Pids of the worker and of everything it started (its pool process, the task supervisor and the
        task process, which the supervisor puts in a process group of its own)."""
        import psutil

        try:
            root = psutil.Process(self.workers[name].pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def kill_worker(self, name: str, *, with_tasks: bool = True) -> dict[str, list[int]]:
        """SIGKILL a worker. ``with_tasks``: every process group of its process tree (its own, and each task
        process's), as a lost machine or pod dies; else only the worker's own group (``kill -9 -<pgid>``),
        which leaves its task processes running as orphans (``survivors``; `stop` kills them).
        Returns the pids of the tree, the process groups killed and the survivors."""
        import psutil

        pids = self.worker_tree(name)
        group_of: dict[int, int] = {}
        for pid in pids:
            try:
                group_of[pid] = os.getpgid(pid)
            except ProcessLookupError:
                pass
        groups = [self.workers[name].pid]  # its own session and group (start_new_session)
        if with_tasks:
            groups += list(group_of.values())
        groups = sorted(set(groups), key=groups.index)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers[name].wait(timeout=30)
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass

        def alive(proc) -> bool:
            try:
                return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        # SIGKILL is asynchronous: the killed groups' processes may take a moment to be gone (a zombie
        # nobody reaps yet counts as gone); only processes outside the killed groups survive
        deadline = time.monotonic() + 5
        while any(alive(p) for p in procs if group_of.get(p.pid) in groups) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [p for p in procs if alive(p)]
        self.orphans += left
        return {"pids": pids, "process_groups": groups, "survivors": [p.pid for p in left]}

    def stop(self, timeout: float = 30) -> None:
        """Stop the Celery workers (and orphans of killed ones), then every component, and everything they
        started (task processes, Spark JVMs): SIGTERM to the process tree, SIGKILL to what is left after
        ``timeout``. Safe to call twice."""
        for name in list(self.workers):
            proc = self.workers.pop(name)
            if proc.poll() is None:
                _stop_tree(proc, timeout)
        import psutil

        while self.orphans:
            proc = self.orphans.pop()
            try:
                if proc.is_running():  # the same process (pid and start time), not a reused pid
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        for name in reversed(COMPONENTS):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _stop_tree(proc, timeout)

    def __enter__(self) -> AirflowDeployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise when a component exited (with the tail of its log)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 60) -> str:
        log = self.logs / f"{name}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""

    def wait_until(self, fn: Callable[[], Any], timeout: float, what: str, poll: float = 2.0) -> Any:
        """Poll ``fn`` until it returns something truthy (returned); TimeoutError after ``timeout`` seconds,
        RuntimeError as soon as a component died. Connection errors while a server starts count as falsy."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                value = fn()
            except (httpx.TransportError, httpx.HTTPStatusError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f}s for {what}")
            time.sleep(poll)

    # -- REST API (/api/v2) -------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        r = httpx.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        r.raise_for_status()
        return r.json() if r.content else None

    def health(self) -> dict[str, Any]:
        return self.api("GET", "/monitor/health")

    def healthy(self) -> bool:
        h = self.health()
        parts = ["metadatabase", *(c.replace("-", "_") for c in self.components if c != "api-server")]
        return all((h.get(k) or {}).get("status") == "healthy" for k in parts)

    def set_pool(self, name: str, slots: int) -> None:
        import httpx

        body = {
            "name": name,
            "slots": slots,
            "description": "SoE (orchestration section)",
            "include_deferred": False,
        }
        try:
            self.api("POST", "/pools", json=body)
        except httpx.HTTPStatusError as e:
            if e.response.status_code != 409:
                raise
            self.api("PATCH", f"/pools/{quote(name, safe='')}", json=body)

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        import httpx

        try:
            return self.api("GET", f"/dags/{dag_id}")
        except httpx.HTTPStatusError as e:
            if e.response.status_code == 404:
                return None
            raise

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of ``dag_id`` (``run_type``, ``state``, ``logical_date``, interval), oldest first."""
        out = self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"})
        return out["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        out = self.api("GET", path, params={"limit": 100})
        return out["task_instances"]

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """Every try of one task instance (the state of each), oldest first."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        return sorted(self.api("GET", path)["task_instances"], key=lambda t: t["try_number"])

    def trigger(
        self,
        dag_id: str,
        logical_date: datetime | str | None = None,
        conf: dict[str, Any] | None = None,
        data_interval: tuple[datetime, datetime] | None = None,
    ) -> dict[str, Any]:
        """A manual run (``run_type`` manual), as the UI's trigger button makes it; ``data_interval`` =
        [start, end) (default: the DAG's timetable infers it from the logical date)."""
        when = None if logical_date is None else utc(logical_date).isoformat()
        body: dict[str, Any] = {"logical_date": when, "conf": conf or {}}
        if data_interval is not None:
            start, end = (utc(t).isoformat() for t in data_interval)
            body.update(data_interval_start=start, data_interval_end=end)
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def asset_events(self, uri: str | None = None, source_dag_id: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 100, "order_by": "timestamp"}
        if source_dag_id:
            params["source_dag_id"] = source_dag_id
        events = self.api("GET", "/assets/events", params=params)["asset_events"]
        return [e for e in events if uri is None or e.get("uri") == uri]

    def wait_for_runs(
        self,
        dag_id: str,
        count: int,
        *,
        run_type: str | None = None,
        timeout: float = 900,
        poll: float = 3.0,
        on_poll: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` runs of ``dag_id`` (of ``run_type``, if given) have finished, and return them.

        Raises `RunFailed` (with the failed tasks and their log tails) as soon as one of them failed, and
        TimeoutError past ``timeout``. ``on_poll`` sees the runs at each poll (e.g. to land a partition).
        """

        def finished() -> list[dict[str, Any]] | None:
            runs = [r for r in self.dag_runs(dag_id) if run_type is None or r["run_type"] == run_type]
            if on_poll is not None:
                on_poll(runs)
            failed = [r for r in runs if r["state"] == "failed"]
            if failed:
                raise RunFailed(self.failure_report(dag_id, failed[0]))
            done = [r for r in runs if r["state"] in FINISHED]
            return done if len(done) >= count else None

        return self.wait_until(finished, timeout, f"{count} finished {run_type or ''} runs of {dag_id}", poll)

    def failure_report(self, dag_id: str, run: dict[str, Any], lines: int = 30) -> str:
        """The failed task instances of a run, with the tail of each one's task log."""
        out = [f"{dag_id} {run['dag_run_id']} ({run['run_type']}) is {run['state']}"]
        for ti in self.task_instances(dag_id, run["dag_run_id"]):
            if ti["state"] in ("failed", "upstream_failed"):
                out.append(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} after try {ti['try_number']}")
                for log in sorted(
                    self.home.glob(
                        f"logs/dag_id={dag_id}/run_id={run['dag_run_id']}/task_id={ti['task_id']}/**/*.log"
                    )
                ):
                    out.append("    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # -- CLI ------------------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """One ``airflow ...`` command against this deployment's DB and config (output captured)."""
        proc = self._airflow(*args, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        return proc

    def backfill_create(
        self,
        dag_id: str,
        from_date: datetime | str,
        to_date: datetime | str,
        max_active_runs: int = 1,
        reprocess: str = "none",
    ) -> subprocess.CompletedProcess:
        """``airflow backfill create``: the scheduler runs the range's logical dates (run_type backfill)."""
        return self.cli(
            "backfill",
            "create",
            "--dag-id",
            dag_id,
            "--from-date",
            utc(from_date).isoformat(),
            "--to-date",
            utc(to_date).isoformat(),
            "--max-active-runs",
            str(max_active_runs),
            "--reprocess-behavior",
            reprocess,
        )

    def list_runs_cli(self, dag_id: str) -> list[dict[str, Any]]:
        """``airflow dags list-runs <dag> -o json`` (straight from the metadata DB)."""
        out = self.cli("dags", "list-runs", dag_id, "-o", "json").stdout
        for line in reversed(out.splitlines()):  # the JSON array, after any log lines
            if line.strip().startswith(("[{", "[]")):
                return json.loads(line)
        raise RuntimeError(f"no JSON in the output of airflow dags list-runs {dag_id}:\n{out[-2000:]}")


def _stop_tree(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a component and its descendants, SIGKILL whatever is left after ``timeout``."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    try:  # anything that left the tree but stayed in the component's own session (started by us)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
