"""Running the DAGs with ``airflow dags test`` in an isolated Airflow home (main job, tests, bench).

`AirflowHome` owns one directory: a SQLite metadata DB (``airflow db migrate`` once, a few seconds),
the ``soe.yaml`` the tasks load (the caller's Settings, dumped), and a log per run. Each run is one
``airflow dags test <dag> <logical date>`` subprocess: exactly what an operator types, tasks run in
that process one after another, no scheduler or webserver needed.

For the cron data-interval timetable of ``soe_hourly``, ``airflow dags test soe_hourly T`` runs
the interval ``[T - 1h, T)``: the logical date is the run's ``as_of``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "SOE_CONFIG": str(self.config),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        })
        env.update(extra or {})
        return env

    def _airflow(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 1800) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).with_name("airflow")), *args]
        out = open(log, "w") if log else subprocess.PIPE
        try:
            return subprocess.run(cmd, env=env or self.env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, cwd=self.home)
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

    def dags_test(self, dag_id: str, logical_date: datetime | str, conf: dict[str, Any] | None = None,
                  extra_env: dict[str, str] | None = None, timeout: float = 1800) -> RunResult:
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
