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


def test_the_triggerer_binds_each_trigger_to_structlog_s_context_and_process_work_drops_it() -> None:
    # What process_context() undoes: Airflow's triggerer binds the running trigger to
    # structlog's context variables, and routes what is logged under it to the trigger's log.
    import inspect

    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars

    source = inspect.getsource(TriggerRunner.run_trigger)
    assert "bind_log_contextvars(" in source
    assert "trigger_id=trigger_id" in source
    bind_contextvars(trigger_id=7, dag_id="d")
    try:
        assert _airflow.process_context().run(get_contextvars) == {}
        assert get_contextvars() == {"trigger_id": 7, "dag_id": "d"}  # the trigger's own is kept
    finally:
        unbind_contextvars("trigger_id", "dag_id")


def test_the_confirmer_works_outside_the_log_of_the_trigger_that_started_it() -> None:
    # A confirmer started by one trigger deletes every task's messages: what it logs must not go
    # to that one trigger's task log (Airflow routes by the trigger_id bound in the context).
    from structlog.contextvars import bind_contextvars, get_contextvars

    from airflow_sm_callback.protocol import CallbackMessage
    from airflow_sm_callback.triggers.handoffs import HandOff, HandOffConfirmer

    seen: list[dict[str, Any]] = []
    looked = asyncio.Event()

    async def states(keys: Any) -> dict[TaskKey, str | None]:
        seen.append(dict(get_contextvars()))
        looked.set()
        return dict.fromkeys(keys, "running")

    async def main() -> None:
        bind_contextvars(trigger_id=7)  # as in the trigger that starts the confirmer
        confirmer = HandOffConfirmer(lambda: states)
        body = '{"token": "Ab3dE6gH9k", "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/e1"}'
        callback = CallbackMessage.from_sqs({"MessageId": "m", "ReceiptHandle": "r", "Body": body})
        owner = TaskKey("d", "r", "t")
        confirmer.watch(HandOff(callback, ["r"], frozenset({"m"}), owner, "triggerer"), 60.0)
        await asyncio.wait_for(looked.wait(), timeout=10)
        assert get_contextvars() == {"trigger_id": 7}
        await confirmer.aclose()

    asyncio.run(main())
    assert seen, "the confirmer never looked at the task"
    assert all("trigger_id" not in context for context in seen), seen
