"""
Human approval of callback steps (Airflow 3.1+): the real scheduler, triggerer and API server,
answers through Airflow's REST API as the stack's accounts, outcomes asserted in the emulator.
"""

from __future__ import annotations

import json
import time
import urllib.error
from typing import Any

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.dags.approval_dags import STEP
from tests.fixtures import unique
from tests.system.stack import ROOT, AirflowStack

pytestmark = [
    pytest.mark.system,
    pytest.mark.xdist_group("stack"),
    pytest.mark.skipif(not _airflow.AIRFLOW_V_3_1_PLUS, reason="human-in-the-loop tasks need Airflow 3.1"),
]

OUTPUTS = {
    "approved_by": "String",
    "approved_at": "String",
    "traffic_percent": "Integer",
    "register": "Boolean",
}


def approval_pipeline(emulator: CallbackEmulator, queue_url: str) -> str:
    """A pipeline that pauses at a callback step whose outputs a person gives; its execution started."""
    name = unique("approve")
    emulator.create_pipeline(
        name,
        {
            "Version": "2020-12-01",
            "Parameters": [],
            "Steps": [
                {
                    "Name": STEP,
                    "Type": "Callback",
                    "Arguments": {"step_name": "approve", "auc": 0.93, "accuracy": 0.88},
                    "SqsQueueUrl": queue_url,
                    "OutputParameters": [{"OutputName": k, "OutputType": v} for k, v in OUTPUTS.items()],
                }
            ],
        },
    )
    return emulator.start_execution(name)


def hitl_path(dag_id: str, run_id: str, task_id: str = "approve") -> str:
    return f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"


def deferral_processed(
    stack: AirflowStack, dag_id: str, run_id: str, task_id: str, within: float = 60
) -> None:
    """Wait until the scheduler processed the end of the task's deferring process (its log says so)."""
    needle = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},"
    deadline = time.monotonic() + within
    while needle not in stack.log_path("scheduler").read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the scheduler did not process the deferral of {run_id} within {within:.0f} s"
            )
        time.sleep(0.5)
    time.sleep(0.5)


def requested(
    stack: AirflowStack, dag_id: str, run_id: str, task_id: str = "approve", within: float = 120
) -> dict[str, Any]:
    """The run's approval request, once the task asks and waits."""
    deadline = time.monotonic() + within
    while True:
        state = stack.task_instances(dag_id, run_id).get(task_id, {}).get("state")
        if state == "deferred":
            try:
                found = stack.request("GET", hitl_path(dag_id, run_id, task_id))
                # An answer before the scheduler has processed the end of the deferring process
                # resumes the task too early, and Airflow then fails it ("finished with state
                # success, but the task instance's state attribute is running"; the race the
                # sensor's resume hold avoids, docs/reliability.md). A person answers later; the
                # approval trigger holds no resume hold yet. So answer once the scheduler's log
                # shows it processed that end (3 s after the deferral was not always enough).
                deferral_processed(stack, dag_id, run_id, task_id)
                return found
            except urllib.error.HTTPError as err:
                if err.code != 404:
                    raise
        if time.monotonic() > deadline:
            raise AssertionError(f"no approval request within {within:.0f} s (task {state})")
        time.sleep(1)


def answer(
    stack: AirflowStack,
    dag_id: str,
    run_id: str,
    user: str,
    option: str,
    fields: dict[str, Any],
    task_id: str = "approve",
) -> int:
    """Answer as ``user``; the HTTP status."""
    try:
        stack.request(
            "PATCH",
            hitl_path(dag_id, run_id, task_id),
            {"chosen_options": [option], "params_input": fields},
            as_user=user,
            attempts=1,
        )
    except urllib.error.HTTPError as err:
        return err.code
    return 200


def run_approval(
    stack: AirflowStack, emulator: CallbackEmulator, queue_url: str, dag_id: str, outputs: dict[str, Any]
) -> tuple[str, str]:
    arn = approval_pipeline(emulator, queue_url)
    run_id = unique("run")
    stack.wait_for_dag(dag_id)
    stack.trigger(dag_id, {"execution_arn": arn, "outputs": outputs}, run_id)
    return arn, run_id


#: The scenarios, all started at once (each waits minutes for people or timeouts; together, one).
SCENARIOS = {
    "approve": ("approval_gate", {"traffic_percent": 10}),
    "reject": ("approval_gate", {}),
    "stop": ("approval_gate", {}),
    "default-approve": ("approval_timeout_default", {"traffic_percent": 5, "register": False}),
    "no-default": ("approval_timeout_none", {"traffic_percent": 5, "register": False}),
}


@pytest.fixture(scope="module")
def started(emulator: CallbackEmulator, stack: AirflowStack) -> dict[str, tuple[str, str]]:
    """Every scenario's execution and DAG run, started together: ``{name: (arn, run_id)}``."""
    queue_url = emulator.create_queue(unique("approvals"))
    return {
        name: run_approval(stack, emulator, queue_url, dag_id, outputs)
        for name, (dag_id, outputs) in SCENARIOS.items()
    }


def test_approved_by_an_assigned_user_the_step_succeeds_with_typed_outputs_once(
    emulator: CallbackEmulator, stack: AirflowStack, started: dict[str, tuple[str, str]]
) -> None:
    arn, run_id = started["approve"]
    request = requested(stack, "approval_gate", run_id)
    token = emulator.step(arn, STEP)["Metadata"]["Callback"]["CallbackToken"]
    # The request: the pipeline, the step, the callback's arguments, a console link; no token.
    assert request["subject"].startswith(f"Approve callback step {STEP} of pipeline")
    assert "0.93" in request["body"]
    assert "console.aws.amazon.com/sagemaker" in request["body"]
    assert token not in str(request)
    # One field per output asked for, typed by the step's declaration; the filled ones not asked.
    fields = request["params"]
    assert set(fields) == {"traffic_percent", "register", "comment"}
    assert fields["traffic_percent"]["schema"]["type"] == "integer"
    assert fields["traffic_percent"]["value"] == 10
    assert fields["register"]["schema"]["type"] == ["boolean", "null"]  # no default: empty until filled
    # Someone not assigned: 403, nothing closed.
    assert (
        answer(
            stack, "approval_gate", run_id, "outsider", "Approve", {"traffic_percent": 50, "register": True}
        )
        == 403
    )
    assert emulator.step(arn, STEP)["StepStatus"] == "Executing"
    assert (
        answer(
            stack,
            "approval_gate",
            run_id,
            "approver",
            "Approve",
            {"traffic_percent": 25, "register": True, "comment": "ok"},
        )
        == 200
    )
    # A second answer: 409, and the step is closed once.
    assert answer(stack, "approval_gate", run_id, "approver", "Reject", {}) == 409
    assert stack.wait_for_runs("approval_gate", [run_id], within=120) == {run_id: "success"}
    step = emulator.step(arn, STEP)
    assert step["StepStatus"] == "Succeeded"
    sent = {p["Name"]: p["Value"] for p in step["Metadata"]["Callback"]["OutputParameters"]}
    assert sent["traffic_percent"] == "25"
    assert sent["register"] == "true"
    assert sent["approved_by"] == "approver"
    assert sent["approved_at"][:4] == time.strftime("%Y")
    assert emulator.accepted_closes().get(token) == 1
    result = stack.xcom("approval_gate", run_id, "approve")
    assert result["approved"] is True
    assert result["responded_by"] == "approver"
    logs = stack.logs()
    assert token not in logs


def test_rejected_the_step_fails_with_who_and_why(
    emulator: CallbackEmulator, stack: AirflowStack, started: dict[str, tuple[str, str]]
) -> None:
    arn, run_id = started["reject"]
    requested(stack, "approval_gate", run_id)
    assert (
        answer(stack, "approval_gate", run_id, "approver", "Reject", {"comment": "AUC drifted " + "x" * 400})
        == 200
    )
    assert stack.wait_for_runs("approval_gate", [run_id], within=120) == {run_id: "success"}
    step = emulator.step(arn, STEP)
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"].startswith("Rejected by approver in Airflow: AUC drifted")
    assert len(step["FailureReason"]) == 256
    assert stack.xcom("approval_gate", run_id, "approve")["approved"] is False


@pytest.mark.parametrize(
    ("scenario", "state", "status"),
    [("default-approve", "success", "Succeeded"), ("no-default", "failed", "Failed")],
)
def test_no_answer_in_time_closes_the_step_with_the_default_or_as_failed(
    emulator: CallbackEmulator,
    stack: AirflowStack,
    started: dict[str, tuple[str, str]],
    scenario: str,
    state: str,
    status: str,
) -> None:
    dag_id = SCENARIOS[scenario][0]
    arn, run_id = started[scenario]
    assert stack.wait_for_runs(dag_id, [run_id], within=180) == {run_id: state}
    recorded = stack.request("GET", hitl_path(dag_id, run_id))
    assert recorded["responded_by_user"] is None  # on no one's behalf
    assert recorded["chosen_options"] == (["Approve"] if status == "Succeeded" else ["Reject"])
    step = emulator.step(arn, STEP)
    assert step["StepStatus"] == status
    if status == "Succeeded":
        sent = {p["Name"]: p["Value"] for p in step["Metadata"]["Callback"]["OutputParameters"]}
        assert sent["traffic_percent"] == "5"
        assert sent["register"] == "false"
        assert sent["approved_by"] == "airflow (no one answered)"
    else:
        assert step["FailureReason"].startswith("No one answered the approval request in Airflow within")
    # Answered: a late answer gets 409 and changes nothing.
    assert answer(stack, dag_id, run_id, "approver", "Reject", {}) == 409
    assert emulator.step(arn, STEP)["StepStatus"] == status


def test_a_pipeline_stopped_while_waiting_has_its_step_closed_and_no_approval_after(
    emulator: CallbackEmulator, stack: AirflowStack, started: dict[str, tuple[str, str]]
) -> None:
    arn, run_id = started["stop"]
    requested(stack, "approval_gate", run_id)
    emulator.client("sagemaker").stop_pipeline_execution(PipelineExecutionArn=arn)
    assert stack.wait_for_runs("approval_gate", [run_id], within=120) == {run_id: "success"}
    assert stack.task_instances("approval_gate", run_id)["approve"]["state"] == "skipped"
    step = emulator.step(arn, STEP)
    assert step["StepStatus"] == "Failed"
    assert "was stopped (StopPipelineExecution) while its approval was awaited" in step["FailureReason"]
    assert emulator.wait_for_execution(arn, timeout=30) == "Stopped"
    # The request was closed on no one's behalf: an approval now gets 409 and sends nothing.
    assert (
        answer(
            stack, "approval_gate", run_id, "approver", "Approve", {"traffic_percent": 1, "register": True}
        )
        == 409
    )
    token = emulator.step(arn, STEP)["Metadata"]["Callback"]["CallbackToken"]
    assert emulator.accepted_closes().get(token) == 1  # the failure alone
    assert emulator.step(arn, STEP)["StepStatus"] == "Failed"


def test_example_4_a_person_approves_the_model_and_the_pipeline_registers_it(
    emulator: CallbackEmulator, callback_queue: str, stack: AirflowStack
) -> None:
    dag_id = "example_sagemaker_callback_approval"
    pipeline = unique("approval-example")
    emulator.create_pipeline(
        pipeline, json.loads((ROOT / "example_dags" / "pipelines" / "approval.json").read_text())
    )
    stack.wait_for_dag(dag_id)
    run_id = unique("run")
    stack.trigger(dag_id, {"queue_url": callback_queue, "pipeline_name": pipeline}, run_id)
    request = requested(stack, dag_id, run_id, task_id="approve_model", within=300)
    # The metrics the pipeline passed to the step, and the fields the step declares.
    assert request["subject"] == "Register churn-model?"
    assert "| auc | 0.912 |" in request["body"]
    assert "| accuracy | 0.874 |" in request["body"]
    assert set(request["params"]) == {"register", "traffic_percent", "comment"}
    assert request["assigned_users"] == [{"id": "approver", "name": "approver"}]
    fields = {"register": True, "traffic_percent": 25, "comment": "good enough"}
    assert answer(stack, dag_id, run_id, "approver", "Approve", fields, task_id="approve_model") == 200
    assert stack.wait_for_runs(dag_id, [run_id], within=180) == {run_id: "success"}
    arn = stack.xcom(dag_id, run_id, "start_pipeline")
    assert emulator.wait_for_execution(arn, timeout=60) == "Succeeded"
    assert emulator.step(arn, "RegisterModel")["StepStatus"] == "Succeeded"
    sent = {
        p["Name"]: p["Value"]
        for p in emulator.step(arn, "ApproveModel")["Metadata"]["Callback"]["OutputParameters"]
    }
    assert sent["register"] == "true"
    assert sent["traffic_percent"] == "25"
    assert sent["approved_by"] == "approver"
