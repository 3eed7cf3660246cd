"""
The real Airflow processes, as ``airflow standalone`` starts them: scheduler, triggerer, DAG
processor and API server, in a throwaway AIRFLOW_HOME, talking to the emulator; with the
LocalExecutor, or the CeleryExecutor and its workers (a Redis broker from Debian's package,
``scripts/redis.sh``, and PostgreSQL). Used by the system tests, the reliability runs and the
benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


#: The servers' fixed ports lie below the kernel's ephemeral range (32768 and up on Linux), where
#: a client socket of another process may hold a port at any moment and make the bind fail.
POSTGRES_PORT = 15433
REDIS_PORT = 16380


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres(port: int = POSTGRES_PORT) -> Iterator[str]:
    """
    A throwaway PostgreSQL server (``scripts/postgres.sh``, Debian's package); yields its
    SQLAlchemy URL. Several triggerers need its row locks, and many concurrent task starts
    need more than one writer at a time.
    """
    directory = Path(tempfile.mkdtemp(prefix="airflow-pg-"))
    directory.chmod(0o755)  # the server runs as the postgres user when started by root
    script = ROOT / "scripts" / "postgres.sh"
    url = subprocess.run(
        [str(script), "start", str(directory / "pg"), str(port)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(script), "stop", str(directory / "pg")], check=False, capture_output=True)


@contextmanager
def redis(port: int = REDIS_PORT) -> Iterator[str]:
    """A throwaway Redis server (``scripts/redis.sh``, Debian's package): the Celery broker's URL."""
    directory = Path(tempfile.mkdtemp(prefix="airflow-redis-"))
    script = ROOT / "scripts" / "redis.sh"
    url = subprocess.run(
        [str(script), "start", str(directory), str(port)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(script), "stop", str(directory)], check=False, capture_output=True)


@dataclass
class AirflowStack:
    """
    Start and stop the Airflow processes; trigger DAG runs and read their state over the REST API.

    :param dags_folder: the DAGs to serve.
    :param extra_env: more environment (an ``AIRFLOW_CONN_*`` for the emulator, settings).
    :param settings: Airflow settings as ``{"section__key": value}``.
    :param sql_alchemy_conn: the metadata database (SQLite in the home by default).
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (which needs ``broker_url`` and a
        PostgreSQL ``sql_alchemy_conn``, its result backend).
    :param celery_workers: Celery workers started with the stack, ``worker-1`` ...
    :param users: ``{name: password}``: real accounts (the simple auth manager's, each an
        admin) instead of everyone being an anonymous admin; REST calls then log in, as the
        first user unless ``as_user`` says otherwise.
    """

    dags_folder: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    sql_alchemy_conn: str | None = None
    executor: str = "LocalExecutor"
    broker_url: str | None = None
    celery_workers: int = 2
    worker_concurrency: int = 16
    users: dict[str, str] = field(default_factory=dict)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="airflow-stack-")))
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False" if self.users else "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.api,
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
        )
        # SQLite with several writing processes: wait for the lock instead of failing at once.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = (
            self.sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}?timeout=60"
        )
        if self.executor == "CeleryExecutor":
            if not self.broker_url or not self.sql_alchemy_conn:
                raise ValueError("the CeleryExecutor needs a broker_url and a PostgreSQL sql_alchemy_conn")
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.sql_alchemy_conn
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        if self.users:
            passwords = self.home / "passwords.json"
            passwords.write_text(json.dumps(self.users))
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(f"{name}:admin" for name in self.users)
            env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
        for key, value in self.settings.items():
            env[f"AIRFLOW__{key.upper()}"] = str(value)
        env.update(self.extra_env)
        return env

    def token(self, user: str) -> str:
        """A JWT for ``user`` (the simple auth manager's ``POST /auth/token``), kept for later calls."""
        if user not in self._tokens:
            request = urllib.request.Request(
                f"{self.api}/auth/token",
                data=json.dumps({"username": user, "password": self.users[user]}).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=60) as response:
                self._tokens[user] = json.loads(response.read())["access_token"]
        return self._tokens[user]

    def log_path(self, component: str) -> Path:
        return self.home / f"{component}.out"

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` command in this stack's environment."""
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def start(self, components: tuple[str, ...] = COMPONENTS) -> AirflowStack:
        """Migrate the database (first time) and start the components; wait for the API."""
        if not (self.home / ".migrated").exists():
            self.airflow("db", "migrate")
            (self.home / ".migrated").touch()
        for component in components:
            self.start_component(component)
        if self.executor == "CeleryExecutor":
            for i in range(1, self.celery_workers + 1):
                self.start_worker(f"worker-{i}")
        self.wait_for_api()
        return self

    def start_worker(self, name: str) -> None:
        """Start one Celery worker (``airflow celery worker``) called ``name``."""
        self.start_component("celery worker", name, ["--celery-hostname", f"{name}@%h"])

    def start_component(self, component: str, name: str | None = None, args: list[str] | None = None) -> None:
        """Start one component (``name`` lets two of the same kind run, e.g. two triggerers)."""
        name = name or component
        out = self.log_path(name).open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *component.split(), *(args or [])],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a component and its children (SIGKILL: no clean shutdown)."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL)."""
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST -------------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, attempts: int = 3, as_user: str | None = None
    ) -> Any:
        """One REST call; a timeout or a 5xx (a busy SQLite database) is tried again."""
        data = json.dumps(body).encode() if body is not None else None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        headers = {"Content-Type": "application/json"}
        if self.users:
            headers["Authorization"] = f"Bearer {self.token(as_user or next(iter(self.users)))}"
        for attempt in range(attempts):
            request = urllib.request.Request(
                f"{self.api}/api/v2/{path.lstrip('/')}",
                data=data,
                method=method,
                headers=headers,
            )
            try:
                with opener.open(request, timeout=60) as response:
                    text = response.read()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as err:
                if err.code == 409 and method == "POST" and attempt > 0:
                    return None  # the attempt that timed out went through after all
                if err.code < 500 or attempt == attempts - 1:
                    raise
            except TimeoutError:
                if attempt == attempts - 1:
                    raise
            time.sleep(2)
        raise AssertionError("unreachable")

    def wait_for_api(self, within: float = 180) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                self.request("GET", "version")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the API server did not start; see {self.log_path('api-server')}"
                    ) from None
                time.sleep(1)

    def wait_for_dag(self, dag_id: str, within: float = 180) -> None:
        """Wait until the DAG processor has parsed ``dag_id``; unpause it."""
        deadline = time.monotonic() + within
        while True:
            try:
                self.request("GET", f"dags/{dag_id}")
                self.request("PATCH", f"dags/{dag_id}", {"is_paused": False})
                return
            except urllib.error.HTTPError as err:
                if err.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str) -> None:
        self.request(
            "POST", f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        )

    def trigger_all(self, dag_id: str, runs: Mapping[str, dict[str, Any]]) -> None:
        """
        Trigger a run of ``dag_id`` for each run id and conf in ``runs``, with the DAG paused
        meanwhile, so that no task of these runs starts while the others are being created.

        On SQLite, a ``POST .../dagRuns`` made while a task's ``PATCH .../run`` was in flight
        was seen to stall both for the busy timeout (60 s): the POST's audit-log insert answered
        500 (database locked) and the task failed to start. Creating the runs first, then
        unpausing, keeps these writes apart.
        """
        self.request("PATCH", f"dags/{dag_id}", {"is_paused": True})
        try:
            for run_id, conf in runs.items():
                self.trigger(dag_id, conf, run_id)
        finally:
            self.request("PATCH", f"dags/{dag_id}", {"is_paused": False})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        result = self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in result["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.request(
            "GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        )
        return entry["value"]

    def wait_for_runs(self, dag_id: str, run_ids: list[str], within: float) -> dict[str, str]:
        """Wait until every run finished (or ``within`` passed); return their states."""
        deadline = time.monotonic() + within
        states: dict[str, str] = {}
        while True:
            states = {run_id: self.run_state(dag_id, run_id) for run_id in run_ids}
            if all(s in ("success", "failed") for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(2)

    def task_logs(self, dag_id: str, run_id: str, task_id: str) -> list[Path]:
        """The log files of every try of one task instance."""
        return sorted(
            (self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}").rglob(
                "*.log"
            )
        )

    def logs(self) -> str:
        """Everything the components printed, and every task's log."""
        files = [*self.home.glob("*.out"), *(p for p in (self.home / "logs").rglob("*") if p.is_file())]
        return "\n".join(p.read_text(errors="replace") for p in files)
