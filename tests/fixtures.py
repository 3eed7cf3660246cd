"""Shared fixtures: the emulator, an Airflow connection to it, a migrated metadata database."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.system.stack import ROOT, AirflowStack, postgres, redis

#: The pipeline example 2's AssetWatcher waits for.
EVENTS_PIPELINE = "sagemaker-callback-events"


@pytest.fixture(scope="session")
def emulator(sagemaker_callback_emulator: CallbackEmulator) -> CallbackEmulator:
    """The session's emulator (see ``airflow_sm_callback.testing.pytest_plugin``)."""
    return sagemaker_callback_emulator


@pytest.fixture
def aws_conn(emulator: CallbackEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aws_default`` pointing at the emulator; its value is the connection id."""
    for key, value in emulator.airflow_connection("aws_default").items():
        monkeypatch.setenv(key, value)
    emulator.reset()
    return "aws_default"


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated metadata database in the session's throwaway AIRFLOW_HOME."""
    home = os.environ["AIRFLOW_HOME"]
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        capture_output=True,
        timeout=300,
    )
    return home


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def callback_definition(
    queue_url: str,
    *,
    steps: tuple[str, ...] = ("Score",),
    outputs: dict[str, str] | None = None,
    arguments: dict[str, Any] | None = None,
    first_step: str | None = None,
) -> dict[str, Any]:
    """A definition with callback steps that run one after another, each with the same outputs."""
    outputs = (
        {"rows": "Integer", "auc": "Float", "passed": "Boolean", "uri": "String"}
        if outputs is None
        else outputs
    )
    body: list[dict[str, Any]] = []
    if first_step:
        body.append({"Name": first_step, "Type": "Processing", "Arguments": {}})
    previous = first_step
    for name in steps:
        step: dict[str, Any] = {
            "Name": name,
            "Type": "Callback",
            "Arguments": {"step_name": name.lower(), **(arguments or {})},
            "SqsQueueUrl": queue_url,
            "OutputParameters": [{"OutputName": k, "OutputType": v} for k, v in outputs.items()],
        }
        if previous:
            step["DependsOn"] = [previous]
        body.append(step)
        previous = name
    return {"Version": "2020-12-01", "Parameters": [], "Steps": body}


@pytest.fixture
def pipeline(emulator: CallbackEmulator, callback_queue: str) -> dict[str, Any]:
    """A one-callback-step pipeline on a fresh queue: ``{"name", "queue_url"}``."""
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    return {"name": name, "queue_url": callback_queue}


@pytest.fixture(scope="session")
def events_queue(sagemaker_callback_emulator: CallbackEmulator) -> str:
    """The queue example 2's watcher polls (fixed when the DAG file is parsed)."""
    return sagemaker_callback_emulator.create_queue(unique("events"))


def _one_stack_per_test_run() -> None:
    """
    Under pytest-xdist, fail if another worker of this test run already started a stack: two
    stacks on two CPUs make every real-process test slow and flaky. It happens when
    ``--dist loadgroup`` stops honouring ``xdist_group`` (pytest 9.2 with pytest-xdist 3.8).
    """
    run, worker = os.environ.get("PYTEST_XDIST_TESTRUNUID"), os.environ.get("PYTEST_XDIST_WORKER")
    if not run or not worker:
        return
    marker = Path(tempfile.gettempdir()) / f"airflow-sm-callback-stack-{run}"
    try:
        with marker.open("x") as claim:
            claim.write(worker)
    except FileExistsError:
        owner = marker.read_text()
        if owner != worker:
            pytest.fail(
                f"the tests that share the Airflow stack run on two workers ({owner} and {worker}): "
                "`--dist loadgroup` is not grouping them (see the pytest pin in pyproject.toml)"
            )


def _stack_dags() -> Path:
    dags = Path(tempfile.mkdtemp(prefix="stack-dags-"))
    for source in [
        *sorted((ROOT / "tests" / "dags").glob("*.py")),
        *sorted((ROOT / "example_dags").glob("*.py")),
    ]:
        (dags / source.name).symlink_to(source)
    return dags


def _stack_env(emulator: CallbackEmulator, events_queue: str) -> dict[str, str]:
    return {
        **emulator.aws_env(),
        **emulator.airflow_connection(),
        "SAGEMAKER_CALLBACK_QUEUE_URL": events_queue,
        "SAGEMAKER_CALLBACK_PIPELINE": EVENTS_PIPELINE,
        # Example 4's approvers: the stack's account that may answer.
        "SAGEMAKER_CALLBACK_APPROVERS": "approver",
    }


#: The accounts of the stack: who may answer an approval, and who may not (both admins).
STACK_USERS = {"approver": "approver-password", "outsider": "outsider-password"}

#: Airflow 3.0's LocalExecutor gives a task to an idle worker before the scheduler has committed
#: its queued state; the task's start is refused ("TI was not in a state where it could be marked
#: as running", previous state scheduled) and the task fails, whatever it runs. Tasks resumed
#: together hit it often (apache/airflow#56010, fixed in 3.1.0). Below 3.1 the tests' stack is
#: therefore the CeleryExecutor one, as Amazon MWAA runs Airflow (README, "Compatibility").
LOCAL_EXECUTOR_STARTS_SAFELY = _airflow.AIRFLOW_V_3_1_PLUS

#: The LocalExecutor stack, while it runs (the Celery one stops it first: one stack at a time).
_LOCAL: list[AirflowStack] = []


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, sagemaker_callback_emulator: CallbackEmulator, events_queue: str
) -> Iterator[AirflowStack]:
    """
    Scheduler, triggerer, DAG processor and API server serving the test DAGs and the examples,
    started on first use and shared by the session (tests using it share an xdist group). On the
    LocalExecutor, or below Airflow 3.1 the CeleryExecutor (:data:`LOCAL_EXECUTOR_STARTS_SAFELY`).
    """
    if not LOCAL_EXECUTOR_STARTS_SAFELY:
        yield request.getfixturevalue("celery_stack")
        return
    _one_stack_per_test_run()
    with AirflowStack(
        dags_folder=_stack_dags(),
        extra_env=_stack_env(sagemaker_callback_emulator, events_queue),
        settings={"core__max_active_runs_per_dag": "64", "core__parallelism": "32"},
        users=STACK_USERS,
    ) as running:
        _LOCAL.append(running)
        yield running


@pytest.fixture(scope="session")
def celery_stack(sagemaker_callback_emulator: CallbackEmulator, events_queue: str) -> Iterator[AirflowStack]:
    """
    The same on the CeleryExecutor, as on Amazon MWAA: PostgreSQL, a Redis broker and two Celery
    workers (Debian's packages, started by the project's scripts). The tests that use it run
    last (``tests/conftest.py``), so it stops the LocalExecutor stack first: two stacks on two
    CPUs would slow both.
    """
    _one_stack_per_test_run()
    while _LOCAL:
        _LOCAL.pop().stop()
    with (
        postgres(port=15434) as url,
        redis() as broker,
        AirflowStack(
            dags_folder=_stack_dags(),
            extra_env=_stack_env(sagemaker_callback_emulator, events_queue),
            settings={
                "core__max_active_runs_per_dag": "64",
                "core__parallelism": "32",
                "scheduler__task_instance_heartbeat_timeout": "60",
                # A task that a killed worker had taken but not started stays queued (its broker
                # message is not redelivered for hours): requeued in two minutes, not ten.
                "scheduler__task_queued_timeout": "120",
                "scheduler__task_queued_timeout_check_interval": "15",
            },
            sql_alchemy_conn=url,
            executor="CeleryExecutor",
            broker_url=broker,
            worker_concurrency=8,
        ) as running,
    ):
        yield running


@pytest.fixture(params=["LocalExecutor", pytest.param("CeleryExecutor", marks=pytest.mark.celery)])
def any_stack(request: pytest.FixtureRequest) -> AirflowStack:
    """The stack of each executor in its turn (real-process tests that run on both)."""
    if request.param == "LocalExecutor" and not LOCAL_EXECUTOR_STARTS_SAFELY:
        pytest.skip("Airflow 3.0's LocalExecutor fails tasks it starts together (apache/airflow#56010)")
    return request.getfixturevalue("stack" if request.param == "LocalExecutor" else "celery_stack")
