"""DAGs the sensor tests run with ``airflow dags test`` (and the real scheduler) against the emulator."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

PARAMS = {
    "queue_url": Param("", type="string"),
    "execution_arn": Param("", type="string"),
    "execution_arns": Param([], type="array"),
    "step_name": Param("", type="string"),
    "arguments": Param({}, type="object"),
}
START = datetime(2026, 1, 1)


@task
def close(callback: dict[str, Any]) -> str:
    """Close the step the sensor found; its arguments' step_name becomes the ``echo`` output."""
    return SageMakerCallbackHook().send_step_success(
        callback["token"],
        {"echo": callback["arguments"].get("step_name", "")},
        execution_arn=callback["pipeline_execution_arn"],
    )


def sensor(task_id: str, **kwargs: Any) -> SageMakerCallbackSensor:
    defaults: dict[str, Any] = {
        "queue_url": "{{ params.queue_url }}",
        "pipeline_execution_arn": "{{ params.execution_arn }}",
        "callback_step_name": "{{ params.step_name }}",
        "arguments": "{{ params.arguments }}",
        "poke_interval": 1,
        "timeout": 120,
        "wait_time_seconds": 1,
    }
    return SageMakerCallbackSensor(task_id=task_id, **{**defaults, **kwargs})


for mode in ("poke", "reschedule", "deferrable"):
    with DAG(dag_id=f"sensor_{mode}", schedule=None, start_date=START, params=PARAMS, max_active_runs=64):
        close(
            sensor(
                "wait",
                mode="reschedule" if mode == "reschedule" else "poke",
                deferrable=mode == "deferrable",
            ).output
        )


with DAG(dag_id="sensor_many", schedule=None, start_date=START, params=PARAMS):
    # Three waits on one queue, each for its own execution, run one after another: each must
    # hand the others' messages back.
    for i in range(3):
        close.override(task_id=f"close_{i}")(
            sensor(f"wait_{i}", pipeline_execution_arn=f"{{{{ params.execution_arns[{i}] }}}}").output
        )


with DAG(dag_id="sensor_timeout", schedule=None, start_date=START, params=PARAMS):
    sensor("wait", timeout=6, stop_execution_on_timeout=True)


with DAG(dag_id="sensor_timeout_deferrable", schedule=None, start_date=START, params=PARAMS):
    sensor("wait", timeout=6, deferrable=True, stop_execution_on_timeout=True)


class FlakySensor(SageMakerCallbackSensor):
    """Fails its first try right after handing the callback on: the retry must recover the token."""

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the hand-off")
        return result


with DAG(dag_id="sensor_retry", schedule=None, start_date=START, params=PARAMS):
    close(
        FlakySensor(
            task_id="wait",
            queue_url="{{ params.queue_url }}",
            pipeline_execution_arn="{{ params.execution_arn }}",
            arguments="{{ params.arguments }}",
            poke_interval=1,
            wait_time_seconds=1,
            timeout=120,
            retries=1,
            retry_delay=timedelta(seconds=0),
        ).output
    )
