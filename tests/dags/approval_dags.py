"""DAGs the approval tests run under the real scheduler, triggerer and API server (Airflow 3.1+)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_sm_callback import _airflow

START = datetime(2026, 1, 1)
PARAMS = {
    "execution_arn": Param("", type="string"),
    "outputs": Param({}, type="object"),
}
#: The user who may answer (the stack's accounts: approver, outsider).
APPROVER = {"id": "approver", "name": "approver"}
STEP = "ApproveModel"
#: Outputs the step declares that a person is not asked for.
FILLED = {"approved_by": "responded_by", "approved_at": "responded_at"}

if _airflow.AIRFLOW_V_3_1_PLUS:
    from airflow_sm_callback.operators.approval import SageMakerCallbackApprovalOperator

    def approval(task_id: str, **kwargs: object) -> SageMakerCallbackApprovalOperator:
        return SageMakerCallbackApprovalOperator(
            task_id=task_id,
            pipeline_execution_arn="{{ params.execution_arn }}",
            callback_step_name=STEP,
            output_defaults="{{ params.outputs | tojson }}",
            fill_from_response=FILLED,
            stop_check_interval=2,
            **kwargs,  # type: ignore[arg-type]
        )

    with DAG(dag_id="approval_gate", schedule=None, start_date=START, params=PARAMS):
        approval("approve", assigned_users=[APPROVER], response_timeout=timedelta(hours=1))

    with DAG(dag_id="approval_timeout_default", schedule=None, start_date=START, params=PARAMS):
        approval("approve", response_timeout=timedelta(seconds=20), default_outcome="approve")

    with DAG(dag_id="approval_timeout_none", schedule=None, start_date=START, params=PARAMS):
        approval("approve", response_timeout=timedelta(seconds=20))
