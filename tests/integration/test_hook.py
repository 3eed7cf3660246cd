"""SageMakerCallbackHook against the emulator over HTTP, sync and async, with the same assertions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import (
    CallbackMatcher,
    CallbackStatus,
    CallbackStepError,
    InvalidOutputParameters,
    OutputType,
)
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration

SDK_DEFINITION = Path(__file__).parents[2] / "example_dags" / "pipelines" / "sdk-callback-with-condition.json"
MESSAGES = Path(__file__).parents[1] / "data" / "messages"

Call = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    """Call a hook method, or its ``a``-prefixed async twin on a fresh event loop."""

    def run(hook: SageMakerCallbackHook, name: str, *args: Any, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(hook, name)(*args, **kwargs)

        async def go() -> Any:
            try:
                return await getattr(hook, f"a{name}")(*args, **kwargs)
            finally:
                await hook.aclose()

        return asyncio.run(go())

    return run


@pytest.fixture
def hook(aws_conn: str) -> SageMakerCallbackHook:
    return SageMakerCallbackHook(aws_conn_id=aws_conn)


def start(emulator: CallbackEmulator, queue_url: str, **kwargs: Any) -> str:
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(queue_url, **kwargs))
    return emulator.start_execution(name)


def receive_one(call: Call, hook: SageMakerCallbackHook, queue_url: str) -> Any:
    received = call(hook, "receive_callbacks", queue_url, wait_time_seconds=2)
    assert len(received.callbacks) == 1, received
    return received.callbacks[0]


def test_a_received_callback_knows_its_first_receive_on_sqs_s_clock(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    """The shared streams time hand-backs from it; it stays the first receive's on later receives."""
    start(emulator, callback_queue)
    first = receive_one(call, hook, callback_queue)
    assert first.first_received_at is not None
    assert abs(first.first_received_at.timestamp() - time.time()) < 10
    call(hook, "change_visibility", callback_queue, [(first.receipt_handle, 0)])
    time.sleep(1.1)
    again = receive_one(call, hook, callback_queue)
    assert again.receive_count == 2
    assert again.first_received_at == first.first_received_at


def test_round_trip(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    arn = start(emulator, callback_queue)
    callback = receive_one(call, hook, callback_queue)
    assert callback.pipeline_execution_arn == arn
    assert callback.arguments == {"step_name": "score"}
    assert callback.status is CallbackStatus.EXECUTING
    assert callback.receive_count == 1

    returned = call(
        hook,
        "send_step_success",
        callback.token,
        {"rows": 7, "auc": 0.91, "passed": True, "uri": "s3://bucket/report.html"},
        execution_arn=arn,
    )
    assert returned == arn
    assert call(hook, "delete_messages", callback_queue, [callback.receipt_handle]).ok

    assert emulator.wait_for_execution(arn) == "Succeeded"
    (step,) = emulator.list_steps(arn)
    assert step["StepStatus"] == "Succeeded"
    assert step["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "0.91"},
        {"Name": "passed", "Value": "true"},
        {"Name": "uri", "Value": "s3://bucket/report.html"},
    ]
    found = call(hook, "find_callback_step", arn, "Score")
    assert found.status == "Succeeded"
    assert found.output_parameters == {
        "rows": "7",
        "auc": "0.91",
        "passed": "true",
        "uri": "s3://bucket/report.html",
    }
    assert emulator.queue_messages(callback_queue) == []


def test_failure_with_reason(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    arn = start(emulator, callback_queue)
    callback = receive_one(call, hook, callback_queue)
    call(hook, "send_step_failure", callback.token, "warehouse job failed: " + "x" * 400, execution_arn=arn)
    assert emulator.wait_for_execution(arn) == "Failed"
    (step,) = emulator.list_steps(arn)
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"].startswith("warehouse job failed: xxx")
    assert step["FailureReason"].endswith("...[truncated]")
    assert len(step["FailureReason"]) == 256


def test_stop_sends_stopping_with_same_token(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    arn = start(emulator, callback_queue)
    executing = receive_one(call, hook, callback_queue)
    call(hook, "delete_messages", callback_queue, [executing.receipt_handle])
    call(hook, "stop_execution", arn)
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Stopping"
    stopping = receive_one(call, hook, callback_queue)
    assert stopping.status is CallbackStatus.STOPPING
    assert stopping.token == executing.token
    call(hook, "send_step_failure", stopping.token, "stopped", execution_arn=arn)
    assert emulator.wait_for_execution(arn) == "Stopped"


def test_closing_twice_completes_once(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    arn = start(emulator, callback_queue, outputs={"rows": "Integer"})
    token = receive_one(call, hook, callback_queue).token
    crt = unique("crt").ljust(40, "a")
    call(hook, "send_step_success", token, {"rows": 1}, client_request_token=crt, execution_arn=arn)
    # The same request again (a retried task): completes at most once, no error.
    call(hook, "send_step_success", token, {"rows": 1}, client_request_token=crt, execution_arn=arn)
    # A new request token on a closed step: the service answers ConflictException, the hook looks
    # the step up and finds it already Succeeded: done.
    call(
        hook,
        "send_step_success",
        token,
        {"rows": 2},
        client_request_token=unique("crt").ljust(40, "b"),
        execution_arn=arn,
    )
    assert emulator.request_counts("sagemaker")["ListPipelineExecutionSteps"] >= 1
    assert emulator.accepted_closes()[token] == 1
    (step,) = emulator.list_steps(arn)
    assert step["Metadata"]["Callback"]["OutputParameters"] == [{"Name": "rows", "Value": "1"}]
    # Closing it the other way is an error naming the execution, never the token.
    with pytest.raises(CallbackStepError) as info:
        call(hook, "send_step_failure", token, "late", execution_arn=arn)
    assert arn in str(info.value)
    assert "Succeeded" in str(info.value)
    assert token not in str(info.value)


def test_conflict_without_execution_is_an_error(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    with pytest.raises(CallbackStepError, match="ResourceNotFound") as info:
        call(hook, "send_step_success", "Zz9yX8wV7u", {})
    assert "Zz9yX8wV7u" not in str(info.value)


def test_validation_before_any_request(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    emulator.clear_requests()
    with pytest.raises(InvalidOutputParameters, match="'nested'"):
        call(hook, "send_step_success", "Ab3dE6gH9k", {"nested": {"a": 1}})
    with pytest.raises(InvalidOutputParameters, match="at most 50"):
        call(hook, "send_step_success", "Ab3dE6gH9k", {f"p{i}": i for i in range(51)})
    with pytest.raises(InvalidOutputParameters, match="declared Integer"):
        call(
            hook,
            "send_step_success",
            "Ab3dE6gH9k",
            {"rows": "many"},
            declared_types={"rows": OutputType.INTEGER},
        )
    with pytest.raises(ValueError, match="token is malformed"):
        call(hook, "send_step_failure", "short", "reason")
    with pytest.raises(ValueError, match="32 to 128"):
        call(hook, "send_step_failure", "Ab3dE6gH9k", "reason", client_request_token="short")
    assert emulator.request_counts("sagemaker") == {}


def test_sdk_definition_both_branches(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    name = unique("sdk")
    emulator.create_pipeline(name, SDK_DEFINITION)
    arns = {}
    for auc in (0.91, 0.5):
        arn = emulator.start_execution(name, {"CallbackQueueUrl": callback_queue, "Threshold": 0.8})
        score = receive_one(call, hook, callback_queue)
        assert score.arguments == {
            "input_uri": "s3://example-bucket/scoring/input.csv",
            "threshold": 0.8,
            "batch_size": 500,
            "step_name": "score",
        }
        types = call(hook, "get_output_types", arn, "ScoreInWarehouse")
        assert types == {
            "rows_scored": "Integer",
            "auc": "Float",
            "passed": "Boolean",
            "report_uri": "String",
        }
        call(
            hook,
            "send_step_success",
            score.token,
            {"rows_scored": "120", "auc": str(auc), "passed": "True", "report_uri": "s3://r"},
            execution_arn=arn,
            declared_types=types,
        )
        call(hook, "delete_messages", callback_queue, [score.receipt_handle])
        arns[auc] = arn
        if auc >= 0.8:
            approval = receive_one(call, hook, callback_queue)
            assert approval.arguments == {"auc": 0.91, "step_name": "approve"}
            assert call(hook, "resolve_step_arguments", arn, "HumanApproval") == approval.arguments
            assert call(hook, "resolve_step_arguments", arn, "ScoreInWarehouse") == score.arguments
            hook.list_page_size = 1
            steps = call(hook, "list_callback_steps", arn)
            assert [s.name for s in steps] == ["HumanApproval", "ScoreInWarehouse"]
            hook.list_page_size = 100
            call(hook, "send_step_success", approval.token, {"approved_by": "ana"}, execution_arn=arn)
            call(hook, "delete_messages", callback_queue, [approval.receipt_handle])
            assert emulator.wait_for_execution(arn) == "Succeeded"
        else:
            assert emulator.wait_for_execution(arn) == "Failed"
            assert "AUC below threshold" in emulator.describe_execution(arn)["FailureReason"]
    assert emulator.queue_messages(callback_queue) == []


def test_poll_leaves_malformed_and_foreign_messages(
    emulator: CallbackEmulator,
    callback_queue: str,
    hook: SageMakerCallbackHook,
    call: Call,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sqs = emulator.client("sqs")
    for name in ("broken-not-json.txt", "foreign-s3-event.json", "broken-bad-token.json"):
        sqs.send_message(QueueUrl=callback_queue, MessageBody=(MESSAGES / name).read_text())
    arn = start(emulator, callback_queue)
    matcher = CallbackMatcher(pipeline_execution_arn=arn)
    claim = None
    for _ in range(5):
        claim = call(hook, "poll_for_callback", callback_queue, matcher, wait_time_seconds=1)
        if claim:
            break
    assert claim is not None
    assert claim.callback.pipeline_execution_arn == arn
    call(hook, "complete_handoff", callback_queue, claim.receipt_handles)
    left = sorted(m["Body"] for m in emulator.queue_messages(callback_queue))
    assert left == sorted(
        (MESSAGES / n).read_text()
        for n in ("broken-not-json.txt", "foreign-s3-event.json", "broken-bad-token.json")
    )
    logs = "".join(capfd.readouterr())
    warnings = [line for line in logs.splitlines() if "not a usable callback" in line]
    assert len(warnings) == 3, logs
    assert all("warning" in line.lower() for line in warnings)  # Airflow 3.0 logs WARNING
    assert claim.callback.token not in logs
    assert "short!" not in logs


def test_unwanted_messages_are_handed_back_at_once(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    mine = start(emulator, callback_queue)
    other = start(emulator, callback_queue)
    claim = call(
        hook,
        "poll_for_callback",
        callback_queue,
        CallbackMatcher(pipeline_execution_arn=mine),
        wait_time_seconds=1,
    )
    assert claim.callback.pipeline_execution_arn == mine
    # The other execution's message is visible again right away for its own waiter.
    received = call(hook, "receive_callbacks", callback_queue, wait_time_seconds=0)
    assert [c.pipeline_execution_arn for c in received.callbacks] == [other]
    assert received.callbacks[0].receive_count == 2


def test_stale_message_is_deleted_by_whoever_receives_it(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    arn = start(emulator, callback_queue, outputs={})
    callback = receive_one(call, hook, callback_queue)
    call(hook, "release_messages", callback_queue, [callback.receipt_handle])
    call(hook, "send_step_success", callback.token, {}, execution_arn=arn)
    nobody = CallbackMatcher(pipeline_name="someone-else")
    # Second receive of a message nobody wants: its step is looked up, found closed, deleted.
    assert call(hook, "poll_for_callback", callback_queue, nobody, wait_time_seconds=1) is None
    assert emulator.queue_messages(callback_queue) == []


def test_partial_batch_failure_is_reported(
    emulator: CallbackEmulator,
    callback_queue: str,
    hook: SageMakerCallbackHook,
    call: Call,
    capfd: pytest.CaptureFixture[str],
) -> None:
    start(emulator, callback_queue)
    callback = receive_one(call, hook, callback_queue)
    result = call(hook, "delete_messages", callback_queue, [callback.receipt_handle, "not-a-receipt-handle"])
    assert result.succeeded == [callback.receipt_handle]
    assert [f[0] for f in result.failed] == ["not-a-receipt-handle"]
    assert not result.ok
    assert "DeleteMessageBatch failed" in "".join(capfd.readouterr())


def test_throttling_is_retried(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    start(emulator, callback_queue)
    emulator.inject_fault("sqs", "ReceiveMessage", code="ThrottlingException", count=2)
    callback = receive_one(call, hook, callback_queue)
    assert emulator.request_counts("sqs", queue=callback_queue)["ReceiveMessage"] == 3
    assert callback.receive_count == 1


def test_tokens_are_registered_with_the_masker(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call
) -> None:
    from airflow_sm_callback._airflow import redact

    arn = start(emulator, callback_queue, outputs={})
    callback = receive_one(call, hook, callback_queue)
    call(hook, "find_callback_step", arn)
    assert redact(f"token={callback.token}") == "token=***"
    assert json.dumps(redact({"token": callback.token})) == '{"token": "***"}'


@pytest.mark.parametrize("code", ["ConflictException", "ResourceNotFound"])
def test_passing_conflict_on_an_open_step_is_retried(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook, call: Call, code: str
) -> None:
    arn = start(emulator, callback_queue, outputs={"rows": "Integer"})
    token = receive_one(call, hook, callback_queue).token
    emulator.inject_fault("sagemaker", "SendPipelineExecutionStepSuccess", code=code, count=2)
    assert call(hook, "send_step_success", token, {"rows": 5}, execution_arn=arn) == arn
    counts = emulator.request_counts("sagemaker")
    assert counts["SendPipelineExecutionStepSuccess"] == 3
    assert counts["ListPipelineExecutionSteps"] == 2
    (step,) = emulator.list_steps(arn)
    assert step["StepStatus"] == "Succeeded"
    assert step["Metadata"]["Callback"]["OutputParameters"] == [{"Name": "rows", "Value": "5"}]


def test_accepted_closes_count_a_lenient_reclose(
    emulator: CallbackEmulator, callback_queue: str, hook: SageMakerCallbackHook
) -> None:
    emulator.configure(conflict_on_reclose=False)
    arn = start(emulator, callback_queue, outputs={})
    token = hook.receive_callbacks(callback_queue, wait_time_seconds=2).callbacks[0].token
    hook.send_step_success(token, {}, client_request_token=unique("one").ljust(40, "x"), execution_arn=arn)
    hook.send_step_success(token, {}, client_request_token=unique("two").ljust(40, "x"), execution_arn=arn)
    assert emulator.accepted_closes()[token] == 2
