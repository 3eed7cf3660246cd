"""
Example 4: a person approves a model in Airflow's UI before the pipeline registers it.

The pipeline (``example_dags/pipelines/approval.json``) trains a model, hands its evaluation to
Airflow (the ``EvaluateModel`` callback step: Airflow computes the metrics and returns them as
the step's outputs), then pauses at ``ApproveModel``: this DAG asks a person, under Required
Actions in Airflow's UI, with the metrics shown. Approve sends the outputs the person entered
(whether to register, the traffic share) and who approved and when; the pipeline then registers
the model or ends in its fail step. Reject closes the step as failed: the pipeline stops there.

Needs Airflow 3.1 or newer (human-in-the-loop tasks); on Airflow 3.0 this file fails to parse
with an error that says so. Who may answer: ``SAGEMAKER_CALLBACK_APPROVERS`` (user ids, comma
separated, in the environment of the processes that parse this file); anyone with access to the
DAG when it is unset.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerStartPipelineOperator
from airflow.sdk import DAG, Param, task

from airflow_sm_callback.operators.approval import SageMakerCallbackApprovalOperator
from airflow_sm_callback.operators.callback import (
    SageMakerCallbackFailureOperator,
    SageMakerCallbackSuccessOperator,
)
from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor

EXECUTION = "{{ ti.xcom_pull(task_ids='start_pipeline') }}"
APPROVERS = [
    {"id": user.strip(), "name": user.strip()}
    for user in os.environ.get("SAGEMAKER_CALLBACK_APPROVERS", "").split(",")
    if user.strip()
]

with DAG(
    dag_id="example_sagemaker_callback_approval",
    description="A person approves a model in Airflow's UI between its evaluation and its registration",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "queue_url": Param("", type="string", description="SQS queue of the pipeline's callback steps"),
        "pipeline_name": Param("sagemaker-callback-approval", type="string"),
        "model_name": Param("churn-model", type="string"),
        "aws_conn_id": Param("aws_default", type="string"),
    },
    tags=["example", "sagemaker"],
) as dag:
    start = SageMakerStartPipelineOperator(
        task_id="start_pipeline",
        pipeline_name="{{ params.pipeline_name }}",
        pipeline_params={
            "CallbackQueueUrl": "{{ params.queue_url }}",
            "ModelName": "{{ params.model_name }}",
        },
        aws_conn_id="{{ params.aws_conn_id }}",
    )

    wait_for_evaluation = SageMakerCallbackSensor(
        task_id="wait_for_evaluation",
        queue_url="{{ params.queue_url }}",
        pipeline_execution_arn=EXECUTION,
        callback_step_name="EvaluateModel",
        aws_conn_id="{{ params.aws_conn_id }}",
        deferrable=True,
        timeout=3600,
    )

    @task
    def evaluate(callback: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the trained model on the hold-out set (here: fixed figures); the step's outputs."""
        return {"auc": 0.912, "accuracy": 0.874}

    close_evaluation = SageMakerCallbackSuccessOperator(
        task_id="close_evaluation",
        callback=wait_for_evaluation.output,
        output_parameters=evaluate(wait_for_evaluation.output),
        aws_conn_id="{{ params.aws_conn_id }}",
    )

    wait_for_approval = SageMakerCallbackSensor(
        task_id="wait_for_approval",
        queue_url="{{ params.queue_url }}",
        pipeline_execution_arn=EXECUTION,
        callback_step_name="ApproveModel",
        aws_conn_id="{{ params.aws_conn_id }}",
        deferrable=True,
        timeout=3600,
    )

    approve = SageMakerCallbackApprovalOperator(
        task_id="approve_model",
        callback=wait_for_approval.output,
        subject="Register {{ params.model_name }}?",
        output_defaults={"register": True, "traffic_percent": 10},
        fill_from_response={"approved_by": "responded_by", "approved_at": "responded_at"},
        assigned_users=APPROVERS or None,
        response_timeout=timedelta(days=2),
        aws_conn_id="{{ params.aws_conn_id }}",
    )

    # The work of a step failed: close it as failed, so that the pipeline never hangs.
    fail_evaluation = SageMakerCallbackFailureOperator(
        task_id="fail_evaluation",
        callback="{{ ti.xcom_pull(task_ids='wait_for_evaluation') }}",
        pipeline_execution_arn=EXECUTION,
        callback_step_name="EvaluateModel",
        aws_conn_id="{{ params.aws_conn_id }}",
    )
    fail_approval = SageMakerCallbackFailureOperator(
        task_id="fail_approval",
        callback="{{ ti.xcom_pull(task_ids='wait_for_approval') }}",
        pipeline_execution_arn=EXECUTION,
        callback_step_name="ApproveModel",
        aws_conn_id="{{ params.aws_conn_id }}",
    )

    start >> wait_for_evaluation >> close_evaluation >> wait_for_approval >> approve
    [wait_for_evaluation, close_evaluation] >> fail_evaluation
    [wait_for_approval, approve] >> fail_approval
