"""Run DAGs with the real ``airflow`` command and read back what happened from the metadata database."""

from __future__ import annotations

import json
import os
import re
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


#: Airflow 3.0 writes every message between a task and its supervisor at debug level, unmasked
#: (XCom values, trigger events, rendered fields), to ``airflow dags test``'s output and to the
#: stdout of the process that supervises tasks; and its triggerer writes its trigger runner's own
#: lines ("Trigger fired event", with the event) to its output unmasked (3.1.0 configures the
#: triggerer's logging, which masks them). The provider cannot mask what Airflow logs there: the
#: token scans leave those lines out on 3.0 and check everything else (README, "Where the token
#: lives").
_UNMASKED_BY_AIRFLOW_3_0 = re.compile(
    r"\[debug\s*\] (Sending( request)?|Received message from (task runner|supervisor))\b.*msg="
    r"|\[info\s*\] Trigger fired event\b"
)


def token_scan_text(text: str) -> str:
    """``text`` as the token scans read it: without the lines Airflow 3.0 writes unmasked."""
    from airflow_sm_callback import _airflow

    if _airflow.AIRFLOW_V_3_1_PLUS:
        return text
    return "\n".join(line for line in text.splitlines() if not _UNMASKED_BY_AIRFLOW_3_0.search(line))
