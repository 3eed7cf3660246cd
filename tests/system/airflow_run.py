"""Run DAGs with the real ``airflow`` command and read back what happened from the metadata database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_sm_callback.testing import CallbackEmulator

ROOT = Path(__file__).resolve().parents[2]
TEST_DAGS = ROOT / "tests" / "dags"
AIRFLOW = [sys.executable, "-m", "airflow"]


def airflow_env(emulator: CallbackEmulator, dags_folder: Path = TEST_DAGS, **extra: str) -> dict[str, str]:
    """The environment for an ``airflow`` subprocess talking to the emulator."""
    env = dict(os.environ)
    env.update(emulator.airflow_connection("aws_default"))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class DagRunResult:
    """What one ``airflow dags test`` did: exit code, output, task states and XComs."""

    returncode: int
    output: str
    state: str | None = None
    tasks: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    xcom: dict[str, Any] = field(default_factory=dict)
    #: Rendered template fields as Airflow stored them (what its UI shows), by task id.
    rendered: dict[str, Any] = field(default_factory=dict)

    def task_state(self, task_id: str) -> str | None:
        return self.tasks.get(task_id, (None, 0))[0]


def latest_run(dag_id: str, home: str | None = None) -> tuple[str | None, str | None]:
    """``(run_id, state)`` of the newest run of ``dag_id``."""
    db = Path(home or os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "select run_id, state from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def read_run(
    dag_id: str, run_id: str, home: str | None = None
) -> tuple[dict[str, tuple[str | None, int]], dict[str, Any]]:
    """Task states (with try numbers) and ``return_value`` XComs of one run."""
    db = Path(home or os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        tasks = {
            task_id: (state, try_number)
            for task_id, state, try_number in conn.execute(
                "select task_id, state, try_number from task_instance where dag_id = ? and run_id = ?",
                (dag_id, run_id),
            )
        }
        xcom = {
            task_id: json.loads(value) if isinstance(value, str | bytes) else value
            for task_id, value in conn.execute(
                "select task_id, value from xcom where dag_id = ? and run_id = ? and key = 'return_value'",
                (dag_id, run_id),
            )
        }
        rendered = {
            task_id: json.loads(value) if isinstance(value, str | bytes) else value
            for task_id, value in conn.execute(
                "select task_id, rendered_fields from rendered_task_instance_fields where dag_id = ? and run_id = ?",
                (dag_id, run_id),
            )
        }
    return tasks, xcom, rendered


def dags_test(dag_id: str, conf: dict[str, Any], env: dict[str, str], timeout: float = 300) -> DagRunResult:
    """``airflow dags test <dag_id> -c <conf>``, then read the run back."""
    proc = subprocess.run(
        [*AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run_id, state = latest_run(dag_id, env["AIRFLOW_HOME"])
    result = DagRunResult(proc.returncode, proc.stdout + proc.stderr, state)
    if run_id:
        result.tasks, result.xcom, result.rendered = read_run(dag_id, run_id, env["AIRFLOW_HOME"])
    return result
