"""One set of real Airflow processes for every system test that needs them (started on first use)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import unique
from tests.system.stack import ROOT, AirflowStack

#: The pipeline example 2's AssetWatcher waits for.
EVENTS_PIPELINE = "sagemaker-callback-events"


@pytest.fixture(scope="session")
def events_queue(sagemaker_callback_emulator: CallbackEmulator) -> str:
    """The queue example 2's watcher polls (fixed when the DAG file is parsed)."""
    return sagemaker_callback_emulator.create_queue(unique("events"))


@pytest.fixture(scope="session")
def stack(sagemaker_callback_emulator: CallbackEmulator, events_queue: str) -> Iterator[AirflowStack]:
    """Scheduler, triggerer, DAG processor and API server serving the test DAGs and the examples."""
    dags = Path(tempfile.mkdtemp(prefix="stack-dags-"))
    for source in [
        *sorted((ROOT / "tests" / "dags").glob("*.py")),
        *sorted((ROOT / "example_dags").glob("*.py")),
    ]:
        (dags / source.name).symlink_to(source)
    env = {
        **sagemaker_callback_emulator.aws_env(),
        **sagemaker_callback_emulator.airflow_connection(),
        "SAGEMAKER_CALLBACK_QUEUE_URL": events_queue,
        "SAGEMAKER_CALLBACK_PIPELINE": EVENTS_PIPELINE,
    }
    with AirflowStack(
        dags_folder=dags,
        extra_env=env,
        settings={"core__max_active_runs_per_dag": "64", "core__parallelism": "32"},
    ) as running:
        yield running
