"""SageMakerCallbackSensor in real ``airflow dags test`` runs against the emulator."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique
from tests.system.airflow_run import DagRunResult, airflow_env, dags_test, token_scan_text

pytestmark = pytest.mark.system

MESSAGES = Path(__file__).parents[1] / "data" / "messages"


@pytest.fixture
def env(emulator: CallbackEmulator, airflow_db: str) -> dict[str, str]:
    emulator.reset()
    return airflow_env(emulator)


def pipeline(emulator: CallbackEmulator, queue_url: str, **kwargs: Any) -> str:
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(queue_url, outputs={"echo": "String"}, **kwargs))
    return name


def assert_closed(emulator: CallbackEmulator, arn: str, echo: str, step: str = "Score") -> None:
    assert emulator.wait_for_execution(arn, timeout=10) == "Succeeded"
    outputs = emulator.step(arn, step)["Metadata"]["Callback"]["OutputParameters"]
    assert outputs == [{"Name": "echo", "Value": echo}]


def assert_no_token_in(result: DagRunResult, emulator: CallbackEmulator, *arns: str) -> None:
    for arn in arns:
        for step in emulator.list_steps(arn):
            token = step.get("Metadata", {}).get("Callback", {}).get("CallbackToken")
            if token:
                assert token not in token_scan_text(result.output), (
                    f"token of {step['StepName']} in the task logs"
                )


def deferred_waits(env: dict[str, str]) -> int:
    """How many ``sensor_deferrable`` waits have deferred (their task instance has a next method)."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db", timeout=30) as conn:
        row = conn.execute(
            "select count(*) from task_instance where dag_id = 'sensor_deferrable' "
            "and task_id = 'wait' and next_method = 'execute_complete'"
        ).fetchone()
    return int(row[0])


@contextmanager
def started_once_deferred(emulator: CallbackEmulator, name: str, env: dict[str, str]) -> Iterator[list[str]]:
    """
    Start an execution of ``name`` only once the sensor has poked and deferred, so that its
    callback reaches the trigger and not the first poke, however slowly ``airflow dags test``
    starts; the execution's ARN is in the yielded list after the block.
    """
    arns: list[str] = []
    before = deferred_waits(env)

    def start() -> None:
        deadline = time.monotonic() + 180
        while deferred_waits(env) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        arns.append(emulator.start_execution(name))

    starter = threading.Thread(target=start)
    starter.start()
    try:
        yield arns
    finally:
        starter.join()


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_each_mode_hands_the_callback_on(
    mode: str, emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    # The callback arrives while the sensor waits: for the deferrable sensor the execution starts
    # once it deferred (matched on its arguments, the ARN being unknown before); for the others
    # the callback step starts after a slow first step.
    if mode == "deferrable":
        name = pipeline(emulator, callback_queue)
        with started_once_deferred(emulator, name, env) as arns:
            result = dags_test(
                "sensor_deferrable", {"queue_url": callback_queue, "arguments": {"step_name": "score"}}, env
            )
        (arn,) = arns
    else:
        emulator.configure(step_delay_seconds=12)
        name = pipeline(emulator, callback_queue, first_step="Prepare")
        arn = emulator.start_execution(name)
        result = dags_test(f"sensor_{mode}", {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.returncode == 0, result.output[-4000:]
    assert ("running trigger in line" in result.output) == (mode == "deferrable")
    assert result.task_state("wait") == "success"
    assert result.task_state("close") == "success"
    callback = result.xcom["wait"]
    assert callback["pipeline_execution_arn"] == arn
    # A poking sensor looks the step up at hand-off; a trigger's claim is handed on as claimed
    # (no AWS request in the resumed task), and this sensor does not match on the step name.
    assert callback["step_name"] == (None if mode == "deferrable" else "Score")
    assert callback["arguments"] == {"step_name": "score"}
    assert callback["status"] == "Executing"
    assert callback["queue_url"] == callback_queue
    assert set(callback) >= {"token", "pipeline_name", "message_id", "execution_id"}
    assert_closed(emulator, arn, "score")
    assert emulator.queue_messages(callback_queue) == []
    assert_no_token_in(result, emulator, arn)


def test_a_deferred_sensor_s_trigger_closes_its_clients_before_its_event(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    # ``airflow dags test`` runs the trigger in line and drops it after its first event: a
    # trigger that opened both its clients (SQS, and SageMaker for the step look-up a step name
    # needs) must have closed them before that event, or aiohttp reports unclosed sessions.
    name = pipeline(emulator, callback_queue)
    with started_once_deferred(emulator, name, env) as arns:
        conf = {"queue_url": callback_queue, "step_name": "Score", "arguments": {"step_name": "score"}}
        result = dags_test("sensor_deferrable", conf, env)
    (arn,) = arns
    assert result.returncode == 0, result.output[-4000:]
    assert "running trigger in line" in result.output
    assert result.xcom["wait"]["step_name"] == "Score"  # the trigger looked the step up
    assert "Unclosed client session" not in result.output
    assert "Unclosed connector" not in result.output
    assert_closed(emulator, arn, "score")
    assert emulator.queue_messages(callback_queue) == []


def test_concurrent_waits_wrong_order_with_garbage(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    sqs = emulator.client("sqs")
    garbage = ("broken-not-json.txt", "foreign-s3-event.json", "broken-bad-token.json")
    for name in garbage:
        sqs.send_message(QueueUrl=callback_queue, MessageBody=(MESSAGES / name).read_text())
    name = pipeline(emulator, callback_queue)
    arns = [emulator.start_execution(name) for _ in range(3)]
    # The waits run first-to-last; their messages arrived last-to-first.
    result = dags_test("sensor_many", {"queue_url": callback_queue, "execution_arns": arns[::-1]}, env)
    assert result.returncode == 0, result.output[-4000:]
    for i, arn in enumerate(arns[::-1]):
        assert result.xcom[f"wait_{i}"]["pipeline_execution_arn"] == arn
        assert_closed(emulator, arn, "score")
    left = sorted(m["Body"] for m in emulator.queue_messages(callback_queue))
    assert left == sorted((MESSAGES / n).read_text() for n in garbage)
    assert result.output.count("not a usable callback") >= 3
    assert_no_token_in(result, emulator, *arns)


@pytest.mark.parametrize("by", ["step_name", "arguments"])
def test_two_callback_steps_told_apart(
    by: str, emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    definition = callback_definition(callback_queue, outputs={"echo": "String"})
    second = json.loads(json.dumps(definition["Steps"][0]))
    second.update(Name="Approve", Arguments={"step_name": "approve"})
    definition["Steps"].append(second)  # both start at once
    name = unique("two")
    emulator.create_pipeline(name, definition)
    arn = emulator.start_execution(name)
    conf: dict[str, Any] = {"queue_url": callback_queue, "execution_arn": arn}
    conf.update({"step_name": "Approve"} if by == "step_name" else {"arguments": {"step_name": "approve"}})
    result = dags_test("sensor_poke", conf, env)
    assert result.returncode == 0, result.output[-4000:]
    assert result.xcom["wait"]["step_name"] == "Approve"
    assert emulator.step(arn, "Approve")["StepStatus"] == "Succeeded"
    assert emulator.step(arn, "Score")["StepStatus"] == "Executing"
    # The other step's message is still there for its own waiter.
    (left,) = emulator.queue_messages(callback_queue)
    assert json.loads(left["Body"])["arguments"] == {"step_name": "score"}


def test_timeout_after_the_step_started_closes_it_as_failed(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    name = pipeline(emulator, callback_queue)
    arn = emulator.start_execution(name)
    emulator.purge_queue(callback_queue)  # the message is lost: nobody will ever see it
    result = dags_test("sensor_timeout", {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.task_state("wait") == "failed"
    assert "timed out" in result.output
    assert emulator.wait_for_execution(arn, timeout=10) == "Failed"
    reason = emulator.step(arn, "Score")["FailureReason"]
    assert reason.startswith("The Airflow wait for this callback timed out after 6s")
    assert "sensor_timeout.wait" in reason


@pytest.mark.parametrize("dag_id", ["sensor_timeout", "sensor_timeout_deferrable"])
def test_timeout_before_the_step_started_stops_the_execution(
    dag_id: str, emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    emulator.configure(step_delay_seconds=600)
    name = pipeline(emulator, callback_queue, first_step="Prepare")
    arn = emulator.start_execution(name)
    result = dags_test(dag_id, {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.task_state("wait") == "failed"
    assert emulator.wait_for_execution(arn, timeout=10) == "Stopped"
    assert [s["StepName"] for s in emulator.list_steps(arn)] == ["Prepare"]
    assert emulator.queue_messages(callback_queue) == []


def test_retried_run_recovers_its_token_without_the_message(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    name = pipeline(emulator, callback_queue)
    arn = emulator.start_execution(name)
    result = dags_test("sensor_retry", {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.returncode == 0, result.output[-4000:]
    assert result.tasks["wait"] == ("success", 2)
    assert "Recovered the callback of step Score" in result.output
    assert result.xcom["wait"]["arguments"] == {"step_name": "score"}
    assert result.xcom["wait"]["message_id"] is None
    assert_closed(emulator, arn, "score")
    assert emulator.queue_messages(callback_queue) == []


def test_stopping_before_the_work_closes_the_step_and_skips(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    name = pipeline(emulator, callback_queue)
    arn = emulator.start_execution(name)
    emulator.client("sagemaker").stop_pipeline_execution(PipelineExecutionArn=arn)
    assert len(emulator.queue_messages(callback_queue)) == 2  # Executing, then Stopping
    result = dags_test("sensor_poke", {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.task_state("wait") == "skipped"
    assert result.task_state("close") == "skipped"
    assert emulator.wait_for_execution(arn, timeout=10) == "Stopped"
    step = emulator.step(arn, "Score")
    assert step["StepStatus"] == "Failed"
    assert "stopping" in step["FailureReason"]
    # The Executing and the Stopping message of one token, on the queue together: one close.
    counts = emulator.request_counts("sagemaker")
    assert counts["SendPipelineExecutionStepFailure"] == 1
    assert counts.get("SendPipelineExecutionStepSuccess", 0) == 0
    assert emulator.queue_messages(callback_queue) == []


def test_duplicate_delivery_yields_one_result(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    name = pipeline(emulator, callback_queue)
    arn = emulator.start_execution(name)
    (original,) = emulator.queue_messages(callback_queue)
    emulator.client("sqs").send_message(QueueUrl=callback_queue, MessageBody=original["Body"])
    result = dags_test("sensor_deferrable", {"queue_url": callback_queue, "execution_arn": arn}, env)
    assert result.returncode == 0, result.output[-4000:]
    assert_closed(emulator, arn, "score")
    assert emulator.request_counts("sagemaker")["SendPipelineExecutionStepSuccess"] == 1
    assert emulator.queue_messages(callback_queue) == []


def test_a_delete_that_fails_after_the_hand_off_does_not_fail_the_sensor(
    emulator: CallbackEmulator, callback_queue: str, env: dict[str, str]
) -> None:
    # The callback is in XCom before the delete: a delete that fails (past botocore's retries)
    # only leaves the message behind, hidden, to be deleted as stale once its step is closed.
    emulator.configure(step_delay_seconds=8)
    name = pipeline(emulator, callback_queue, first_step="Prepare")
    arn = emulator.start_execution(name)
    emulator.inject_fault("sqs", "DeleteMessageBatch", code="InternalFailure", http_status=500)
    try:
        result = dags_test("sensor_deferrable", {"queue_url": callback_queue, "execution_arn": arn}, env)
        failed_deletes = [
            r for r in emulator.requests("sqs") if r["action"] == "DeleteMessageBatch" and r["status"] == 500
        ]
    finally:
        emulator.reset()
    assert result.returncode == 0, result.output[-4000:]
    assert result.task_state("wait") == "success"
    assert result.task_state("close") == "success"
    assert result.xcom["wait"]["pipeline_execution_arn"] == arn
    assert "Could not delete the callback's messages" in result.output
    assert_closed(emulator, arn, "score")
    (left,) = emulator.queue_messages(callback_queue)
    assert left.get("InFlight")
    assert len(failed_deletes) >= 2  # botocore retried the delete, then the sensor went on
