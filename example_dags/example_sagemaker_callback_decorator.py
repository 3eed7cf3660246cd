"""
Example 3: the decorator form, on the pipeline with two callback steps.

``@task.sagemaker_callback`` receives the callback the sensor found; its returned dict becomes
the step's output parameters (converted to the types the step declares) and closes the step as
succeeded. If the function raises, the step is closed as failed on the task's last attempt only,
so a retry can still succeed.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerStartPipelineOperator
from airflow.sdk import DAG, Param, task

from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

try:
    from scoring import score_csv  # the example's work, beside this file in the DAGs folder
except ImportError:  # Airflow 3.0 does not put the DAGs folder on sys.path for every command
    sys.path.append(str(Path(__file__).resolve().parent))
    from scoring import score_csv

EXECUTION = "{{ ti.xcom_pull(task_ids='start_pipeline') }}"

with DAG(
    dag_id="example_sagemaker_callback_decorator",
    description="Close two callback steps with @task.sagemaker_callback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "queue_url": Param("", type="string", description="SQS queue of the pipeline's callback steps"),
        "pipeline_name": Param("sagemaker-callback-example", type="string"),
        "aws_conn_id": Param("aws_default", type="string"),
        "input_uri": Param("s3://sagemaker-callback-example/scoring/input.csv", type="string"),
        "approver": Param("airflow", type="string"),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    tags=["example", "sagemaker"],
) as dag:
    start = SageMakerStartPipelineOperator(
        task_id="start_pipeline",
        pipeline_name="{{ params.pipeline_name }}",
        pipeline_params={"CallbackQueueUrl": "{{ params.queue_url }}", "InputUri": "{{ params.input_uri }}"},
        aws_conn_id="{{ params.aws_conn_id }}",
    )

    def wait_for(step: str) -> SageMakerCallbackSensor:
        return SageMakerCallbackSensor(
            task_id=f"wait_for_{step.lower()}",
            queue_url="{{ params.queue_url }}",
            pipeline_execution_arn=EXECUTION,
            callback_step_name=step,
            aws_conn_id="{{ params.aws_conn_id }}",
            deferrable=True,
            timeout=3600,
        )

    @task.sagemaker_callback(aws_conn_id="{{ params.aws_conn_id }}")
    def score(callback: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ScoreInWarehouse step's work; the returned dict is its outputs."""
        return score_csv(callback, aws_conn_id=(params or {}).get("aws_conn_id", "aws_default"))

    @task.sagemaker_callback(aws_conn_id="{{ params.aws_conn_id }}")
    def approve(callback: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The HumanApproval step: approve what scored well enough to get here."""
        return {"approved_by": (params or {}).get("approver", "airflow")}

    wait_for_score = wait_for("ScoreInWarehouse")
    wait_for_approval = wait_for("HumanApproval")
    scored = score(wait_for_score.output)
    start >> wait_for_score
    scored >> wait_for_approval
    approve(wait_for_approval.output)
