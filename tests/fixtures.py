"""Shared fixtures: the emulator, an Airflow connection to it, a migrated metadata database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from airflow_sm_callback.testing import CallbackEmulator


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
