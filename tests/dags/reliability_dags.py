"""DAGs the reliability scenarios run under the real scheduler and triggerer."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.0
    from airflow.configuration import conf
try:
    from airflow.sdk.exceptions import AirflowRescheduleException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowRescheduleException

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import CallbackMessage
from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

PARAMS = {
    "queue_url": Param("", type="string"),
    "arguments": Param({}, type="object"),
    "execution_arn": Param("", type="string"),
}


@task(retries=3, retry_delay=timedelta(seconds=2))
def close(callback: dict[str, Any]) -> str:
    """Close the step with its step_name argument echoed (retried: the emulator may inject errors)."""
    return SageMakerCallbackHook().send_step_success(
        callback["token"],
        {"echo": callback["arguments"].get("step_name", "")},
        execution_arn=callback["pipeline_execution_arn"],
    )


class DiesAfterReceiving(SageMakerCallbackSensor):
    """Its first try dies (the whole process) after taking the message, before handing it on."""

    def _hand_on(self, context: Any, callback: CallbackMessage, receipt_handles: Any) -> Any:
        if context["ti"].try_number == 1:
            os._exit(137)
        return super()._hand_on(context, callback, receipt_handles)


with DAG(
    dag_id="rel_worker_dies",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    max_active_runs=64,
):
    wait = DiesAfterReceiving(
        task_id="wait",
        queue_url="{{ params.queue_url }}",
        arguments="{{ params.arguments }}",
        poke_interval=1,
        wait_time_seconds=1,
        # Poke-mode waits compete for the queue: a message the other runs' sensors handed back
        # is hidden up to 60 s between receives, and its own retried sensor gets it on about one
        # receive in as many as are polling (see README, "Many runs, one queue").
        timeout=900,
        handoff_visibility=10,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
    close(wait.output)


with DAG(
    dag_id="rel_deferrable",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    max_active_runs=256,
):
    # As a production DAG would be: a wait long enough for hundreds of runs to start, and
    # retries (the emulator may answer errors to the closes; an overloaded Airflow may fail or
    # reset a task: the retried sensor must still get its callback).
    close(
        SageMakerCallbackSensor(
            task_id="wait",
            queue_url="{{ params.queue_url }}",
            arguments="{{ params.arguments }}",
            deferrable=True,
            timeout=1800,
            retries=2,
            retry_delay=timedelta(seconds=5),
        ).output
    )


class RestartedAfterResume(SageMakerCallbackSensor):
    """
    Its first resume is dropped as Airflow drops it when a resumed task fails to start (the DAG
    file timed out importing, say): the task is rescheduled ``[workers] missing_dag_retry_delay``
    seconds later, as Airflow reschedules it, which clears the trigger event, and starts again
    with ``execute``.
    """

    def execute_complete(self, context: Any, event: dict[str, Any], deadline: float | None = None) -> Any:
        if int(context.get("task_reschedule_count", 0) or 0) == 0:
            # Airflow's delay, not shorter: Airflow 3.3.2's scheduler fails a task rescheduled
            # so soon that it is queued again before it learned that the previous process ended.
            delay = conf.getint("workers", "missing_dag_retry_delay", fallback=60)
            raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=delay))
        return super().execute_complete(context, event, deadline)


with DAG(
    dag_id="rel_restarted",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    max_active_runs=256,
):
    close(
        RestartedAfterResume(
            task_id="wait",
            queue_url="{{ params.queue_url }}",
            pipeline_execution_arn="{{ params.execution_arn }}",
            arguments="{{ params.arguments }}",
            deferrable=True,
            timeout=1800,
            # With the execution known, the restarted task recovers the token from its steps.
            # Without, the restarted task's trigger takes the hand-off at once in the triggerer that
            # fired it; in another triggerer it receives the message when this ends.
            handoff_visibility=300,
            retries=2,
            retry_delay=timedelta(seconds=5),
        ).output
    )
