"""SageMakerCallbackSensor's hand-off of a trigger's event, against the emulator (no Airflow run)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_sm_callback._airflow import AirflowSkipException
from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.triggers.events import success_event
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration


def context() -> dict[str, Any]:
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id="d", run_id="r", task_id="wait", map_index=-1, try_number=1, xcom_push=pushed.__setitem__
    )
    return {"ti": ti, "pushed": pushed}


@pytest.mark.parametrize("step_name", [None, "Score"], ids=["step-unknown", "step-known"])
def test_a_stopping_callback_a_trigger_claimed_closes_the_step_and_skips(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str, step_name: str | None
) -> None:
    name = unique("stop")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    arn = emulator.start_execution(name)
    emulator.client("sagemaker").stop_pipeline_execution(PipelineExecutionArn=arn)
    hook = SageMakerCallbackHook(aws_conn_id=aws_conn)
    received = hook.receive_callbacks(callback_queue, wait_time_seconds=1)
    (stopping,) = [c for c in received.callbacks if c.is_stopping]
    handles = [c.receipt_handle for c in received.callbacks if c.receipt_handle]
    event = success_event(stopping.with_step_name(step_name), callback_queue, handles, "task")
    sensor = SageMakerCallbackSensor(task_id="wait", queue_url=callback_queue, aws_conn_id=aws_conn)
    with pytest.raises(AirflowSkipException) as info:
        sensor.execute_complete(context(), event)
    reason = str(info.value)
    named = f"its callback step {step_name} was" if step_name else "its callback step was"
    assert f"{arn} is stopping: {named} closed as failed and the work was not started" == reason
    assert "  " not in reason
    assert emulator.step(arn, "Score")["StepStatus"] == "Failed"
    assert emulator.wait_for_execution(arn, timeout=10) == "Stopped"
    assert emulator.queue_messages(callback_queue) == []  # the task deleted both messages
