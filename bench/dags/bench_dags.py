"""
DAGs of the end-to-end benchmark (``python -m bench``, section 3 of the performance issue).

Each run waits for the callback of its own execution (``params.execution_arn``) on a queue that
every run of the DAG shares:

* ``bench_callback_sensor``: this project's deferrable ``SageMakerCallbackSensor``;
* ``bench_sqs_sensor``: the amazon provider's deferrable ``SqsSensor``, configured as a careful
  user would to wait for one execution's callback (JSONPath filter on ``pipelineExecutionArn``,
  20-second long polls, 10 messages a receive, the queue's 30-second visibility timeout);
* ``bench_datetime_sensor``: ``DateTimeSensorAsync`` (deferrable) firing at ``params.target_time``,
  which measures what Airflow itself takes from a trigger event to a succeeded task.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.amazon.aws.sensors.sqs import SqsSensor
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, Param

from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

START = datetime(2026, 1, 1)
#: Runs of one DAG at a time: above the benchmark's 50.
MAX_ACTIVE_RUNS = 64
PARAMS = {
    "queue_url": Param("", type="string"),
    "execution_arn": Param("", type="string"),
    "target_time": Param("", type="string"),
}
#: Sensors wait far longer than the benchmark's time limit.
TIMEOUT = 3600


class RunScopedSqsSensor(SqsSensor):
    """``SqsSensor`` whose match values are templated, so each run can filter on its own execution."""

    template_fields = (*SqsSensor.template_fields, "message_filtering_match_values")


with DAG(
    dag_id="bench_callback_sensor",
    schedule=None,
    start_date=START,
    params=PARAMS,
    max_active_runs=MAX_ACTIVE_RUNS,
    catchup=False,
):
    SageMakerCallbackSensor(
        task_id="wait",
        queue_url="{{ params.queue_url }}",
        pipeline_execution_arn="{{ params.execution_arn }}",
        deferrable=True,
        timeout=TIMEOUT,
    )


with DAG(
    dag_id="bench_sqs_sensor",
    schedule=None,
    start_date=START,
    params=PARAMS,
    max_active_runs=MAX_ACTIVE_RUNS,
    catchup=False,
):
    RunScopedSqsSensor(
        task_id="wait",
        sqs_queue="{{ params.queue_url }}",
        message_filtering="jsonpath",
        message_filtering_config="pipelineExecutionArn",
        message_filtering_match_values=["{{ params.execution_arn }}"],
        wait_time_seconds=20,
        max_messages=10,
        deferrable=True,
        timeout=TIMEOUT,
    )


with DAG(
    dag_id="bench_datetime_sensor",
    schedule=None,
    start_date=START,
    params=PARAMS,
    max_active_runs=MAX_ACTIVE_RUNS,
    catchup=False,
):
    DateTimeSensorAsync(task_id="wait", target_time="{{ params.target_time }}", timeout=TIMEOUT)
