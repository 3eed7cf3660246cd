"""
The boundary module against the installed Airflow: each internal it reaches still answers as it
was written against (run on every supported Airflow version).
"""

from __future__ import annotations

import asyncio
import random
import string
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import TaskKey


def test_the_version_flags_read_the_installed_airflow() -> None:
    from airflow import __version__

    assert ".".join(map(str, _airflow.AIRFLOW_VERSION)) == __version__.split("+")[0].split(".dev")[0]
    assert (_airflow.AIRFLOW_VERSION >= (3, 3, 0)) == _airflow.AIRFLOW_V_3_3_PLUS


def test_outside_a_triggerer_nothing_claims_to_be_one() -> None:
    assert _airflow.in_triggerer() is False


def test_registered_tokens_are_redacted() -> None:
    tokens = ["".join(random.choices(string.ascii_letters, k=10)) for _ in range(30)]
    _airflow.register_tokens(tokens)
    assert _airflow.redact(" ".join(tokens)) == " ".join(["***"] * 30)
    assert {t for t in tokens if any(t in p for p in _airflow.masker_patterns())} == set(tokens)


@pytest.mark.parametrize("comms", ["async", "sync-only"])
def test_async_masking_registers_here_and_tells_the_supervisor(
    monkeypatch: pytest.MonkeyPatch, comms: str
) -> None:
    from airflow.sdk.execution_time import task_runner

    if comms == "sync-only" and _airflow.AIRFLOW_V_3_3_PLUS:
        pytest.skip("from 3.3 Airflow's own amask_secret talks to the comms")
    told: list[Any] = []

    class Comms:
        def send(self, message: Any) -> None:
            told.append(message)

    class AsyncComms(Comms):
        async def asend(self, message: Any) -> None:
            told.append(message)

    # A task's comms in Airflow 3.0 have no asend (a trigger run inline by `airflow dags test`).
    monkeypatch.setattr(
        task_runner, "SUPERVISOR_COMMS", AsyncComms() if comms == "async" else Comms(), raising=False
    )
    tokens = ["Qq3dE6gH9k", "Ww3dE6gH9k"]
    asyncio.run(_airflow.amask_secrets(tokens))
    assert _airflow.redact("Qq3dE6gH9k Ww3dE6gH9k") == "*** ***"
    assert [m.value for m in told] == [tokens]  # one message for all


def test_task_states_are_read_per_dag_and_hundred_runs_and_mapped_tasks_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.execution_time import task_runner

    asked: list[Any] = []

    class Comms:
        def send(self, message: Any) -> Any:
            asked.append(message)
            states = {run: {"wait": "success", "wait_3": "running"} for run in message.run_ids}
            return SimpleNamespace(task_states=states)

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", Comms(), raising=False)
    keys = [TaskKey("d", f"run-{i:03d}", "wait") for i in range(150)]
    keys += [TaskKey("e", "run-x", "wait", 3), TaskKey("e", "run-x", "wait", 4)]
    states = asyncio.run(_airflow.atask_states(keys))
    assert states[TaskKey("d", "run-000", "wait")] == "success"
    assert states[TaskKey("e", "run-x", "wait", 3)] == "running"
    assert states[TaskKey("e", "run-x", "wait", 4)] is None  # not found
    assert sorted((m.dag_id, len(m.run_ids)) for m in asked) == [("d", 50), ("d", 100), ("e", 1)]
    assert all(type(m).__name__ == "GetTaskStates" for m in asked)


def test_the_shared_stream_names_exist_where_airflow_has_them() -> None:
    if _airflow.AIRFLOW_V_3_3_PLUS:
        assert _airflow.SharedStreamProducer is not object
        assert _airflow.AdvanceItem is not None
        assert _airflow.SharedStreamManager is not None


def test_a_watcher_s_trigger_takes_its_kwargs_as_airflow_3_2_1_gives_them() -> None:
    # Airflow 3.2.0 and 3.2.1 leave an AssetWatcher trigger's nested dicts wrapped in stringified
    # serialization markers (apache/airflow#65973); the trigger must see what it serialized.
    from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger

    original = SageMakerCallbackTrigger(
        queue_url="q",
        matcher={"pipeline_name": "p", "arguments": {"step_name": "enrich", "n": [1, 2]}},
        botocore_config={"retries": {"max_attempts": 3}},
    )
    _, kwargs = original.serialize()

    def wrapped(value: Any) -> Any:
        if isinstance(value, dict):
            return {"Encoding.VAR": {k: wrapped(v) for k, v in value.items()}, "Encoding.TYPE": "dict"}
        return value

    as_given = {
        **kwargs,
        "matcher": wrapped(kwargs["matcher"]),
        "botocore_config": wrapped(kwargs["botocore_config"]),
    }
    rebuilt = SageMakerCallbackTrigger(**as_given)
    assert rebuilt.serialize() == original.serialize()
    assert _airflow.decoded_kwarg({"__var": [1, 2], "__type": "tuple"}) == (1, 2)
    assert _airflow.decoded_kwarg({"__var": 1, "other": 2}) == {"__var": 1, "other": 2}
