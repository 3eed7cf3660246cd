"""DAGs the operator and decorator tests run with ``airflow dags test`` against the emulator."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_sm_callback.notifications.callback import SageMakerCallbackFailureNotifier
from airflow_sm_callback.operators.callback import (
    SageMakerCallbackFailureOperator,
    SageMakerCallbackSuccessOperator,
)
from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

START = datetime(2026, 1, 1)
PARAMS = {
    "queue_url": Param("", type="string"),
    "execution_arns": Param([], type="array"),
    "outputs": Param({}, type="object"),
}


def wait(task_id: str, index: int) -> SageMakerCallbackSensor:
    return SageMakerCallbackSensor(
        task_id=task_id,
        queue_url="{{ params.queue_url }}",
        pipeline_execution_arn=f"{{{{ params.execution_arns[{index}] }}}}",
        poke_interval=1,
        wait_time_seconds=1,
        timeout=120,
    )


with DAG(dag_id="ops_types", schedule=None, start_date=START, params=PARAMS):
    # Execution 0: values rendered by Jinja (text). Execution 1: values from XCom (native types).
    # Both must arrive as the types the step declares.
    jinja_wait = wait("jinja_wait", 0)
    SageMakerCallbackSuccessOperator(
        task_id="jinja_close",
        callback=jinja_wait.output,
        output_parameters={
            "rows": "{{ 3 + 4 }}",
            "auc": "{{ 0.91 }}",
            "passed": "{{ 1 < 2 }}",
            # The callback's arguments are data: Jinja inside them is never rendered.
            "uri": "{{ ti.xcom_pull(task_ids='jinja_wait')['arguments']['jinja'] }}",
        },
    )

    @task
    def work() -> dict[str, Any]:
        return {"rows": 7, "auc": 0.91, "passed": True}

    xcom_wait = wait("xcom_wait", 1)
    SageMakerCallbackSuccessOperator(
        task_id="xcom_close",
        callback=xcom_wait.output,
        output_parameters=[work(), {"uri": "s3://b/k"}],
    )


class CloseThenCrash(SageMakerCallbackSuccessOperator):
    """Closes the step, then fails its first try: the retry must not close it again."""

    def execute(self, context: Any) -> str:
        arn = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after closing")
        return arn


with DAG(
    dag_id="ops_retries",
    schedule=None,
    start_date=START,
    params=PARAMS,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0)},
):
    close_wait = wait("close_wait", 0)
    CloseThenCrash(task_id="close", callback=close_wait.output, output_parameters={"rows": 1})

    @task.sagemaker_callback
    def flaky(callback: dict[str, Any], ti: Any = None) -> dict[str, Any]:
        """Fails its first try: the step must stay open for the retry, which succeeds."""
        if ti.try_number == 1:
            raise RuntimeError("transient failure")
        return {"rows": ti.try_number}

    flaky(wait("flaky_wait", 1).output)


with DAG(dag_id="ops_failures", schedule=None, start_date=START, params=PARAMS):
    # Execution 0: outputs the step rejects; the failure operator closes the step.
    bad_wait = wait("bad_wait", 0)
    bad_close = SageMakerCallbackSuccessOperator(
        task_id="bad_close", callback=bad_wait.output, output_parameters="{{ params.outputs }}"
    )
    bad_close >> SageMakerCallbackFailureOperator(
        task_id="bad_fail",
        callback="{{ ti.xcom_pull(task_ids='bad_wait') }}",
        pipeline_execution_arn="{{ params.execution_arns[0] }}",
    )

    # Execution 1: the decorated work fails on its only attempt.
    @task.sagemaker_callback
    def broken(callback: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("warehouse job exploded")

    broken(wait("broken_wait", 1).output)

    # Execution 2: a plain task fails; its on_failure_callback closes the step.
    notified_wait = wait("notified_wait", 2)

    @task(on_failure_callback=SageMakerCallbackFailureNotifier(callback_task_id="notified_wait"))
    def notified(callback: dict[str, Any]) -> None:
        raise RuntimeError("spark job failed")

    notified(notified_wait.output)
