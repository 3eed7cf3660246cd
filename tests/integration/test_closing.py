"""
Every error a close can get has one behaviour (the table in docs/design.md), each shown against the
emulator with the fault injected: retried by botocore, retried by the hook, looked up, or a task
failure that names the execution and the masked token, never the token.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import CallbackStepError, mask_token
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration

ACTIONS = {"success": "SendPipelineExecutionStepSuccess", "failure": "SendPipelineExecutionStepFailure"}
WANTED = {"success": "Succeeded", "failure": "Failed"}


def open_step(emulator: CallbackEmulator, queue_url: str) -> tuple[str, str]:
    """An execution whose callback step is open: its ARN and the step's token."""
    name = unique("close")
    emulator.create_pipeline(name, callback_definition(queue_url, outputs={"rows": "Integer"}))
    arn = emulator.start_execution(name)
    token = emulator.step(arn, "Score")["Metadata"]["Callback"]["CallbackToken"]
    return arn, token


def close(hook: SageMakerCallbackHook, outcome: str, token: str, arn: str) -> str:
    if outcome == "success":
        return hook.send_step_success(token, {"rows": 3}, execution_arn=arn)
    return hook.send_step_failure(token, "the work failed", execution_arn=arn)


def attempts(emulator: CallbackEmulator, outcome: str) -> list[int]:
    return [r["status"] for r in emulator.requests("sagemaker") if r["action"] == ACTIONS[outcome]]


@pytest.fixture
def fast_hook(aws_conn: str) -> SageMakerCallbackHook:
    """A hook whose own retries (ResourceLimitExceeded) wait 0.1 s instead of 2, 4, 8 and 16."""
    hook = SageMakerCallbackHook(aws_conn_id=aws_conn)
    hook.close_retry_delays = (0.1, 0.1, 0.1, 0.1)
    return hook


@pytest.mark.parametrize("outcome", ["success", "failure"])
@pytest.mark.parametrize(
    ("code", "status"), [("ThrottlingException", 400), ("InternalFailure", 500), ("ServiceUnavailable", 503)]
)
def test_throttling_and_5xx_are_retried_by_botocore(
    emulator: CallbackEmulator,
    callback_queue: str,
    fast_hook: SageMakerCallbackHook,
    outcome: str,
    code: str,
    status: int,
) -> None:
    arn, token = open_step(emulator, callback_queue)
    emulator.clear_requests()
    emulator.inject_fault("sagemaker", ACTIONS[outcome], code=code, http_status=status, count=2)
    assert close(fast_hook, outcome, token, arn) == arn
    assert attempts(emulator, outcome) == [status, status, 200]
    assert emulator.step(arn, "Score")["StepStatus"] == WANTED[outcome]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_throttling_past_botocore_s_attempts_fails_naming_the_execution_and_the_masked_token(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str, outcome: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    hook = SageMakerCallbackHook(
        aws_conn_id=aws_conn, config={"retries": {"mode": "standard", "total_max_attempts": 2}}
    )
    emulator.clear_requests()
    emulator.inject_fault("sagemaker", ACTIONS[outcome], code="ThrottlingException", count=10)
    try:
        with pytest.raises(CallbackStepError) as info:
            close(hook, outcome, token, arn)
        made = attempts(emulator, outcome)
    finally:
        emulator.reset()
    text = str(info.value)
    assert arn in text
    assert mask_token(token) in text
    assert "ThrottlingException" in text
    assert token not in text
    assert made == [400, 400]
    assert emulator.step(arn, "Score")["StepStatus"] == "Executing"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_resource_limit_exceeded_is_retried_by_the_hook(
    emulator: CallbackEmulator, callback_queue: str, fast_hook: SageMakerCallbackHook, outcome: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    emulator.clear_requests()
    emulator.inject_fault("sagemaker", ACTIONS[outcome], code="ResourceLimitExceeded", count=2)
    assert close(fast_hook, outcome, token, arn) == arn
    assert attempts(emulator, outcome) == [400, 400, 200]  # botocore does not retry it; the hook does
    assert emulator.step(arn, "Score")["StepStatus"] == WANTED[outcome]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_resource_limit_exceeded_that_lasts_fails_after_the_hook_s_retries(
    emulator: CallbackEmulator, callback_queue: str, fast_hook: SageMakerCallbackHook, outcome: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    emulator.clear_requests()
    emulator.inject_fault("sagemaker", ACTIONS[outcome], code="ResourceLimitExceeded")
    try:
        with pytest.raises(CallbackStepError, match=r"\(after 5 requests\): ResourceLimitExceeded") as info:
            close(fast_hook, outcome, token, arn)
        made = attempts(emulator, outcome)
    finally:
        emulator.reset()
    assert arn in str(info.value)
    assert mask_token(token) in str(info.value)
    assert token not in str(info.value)
    assert made == [400] * 5
    assert emulator.step(arn, "Score")["StepStatus"] == "Executing"


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_validation_exception_fails_at_once_naming_the_execution_the_masked_token_and_the_message(
    emulator: CallbackEmulator, callback_queue: str, fast_hook: SageMakerCallbackHook, outcome: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    emulator.clear_requests()
    emulator.inject_fault(
        "sagemaker",
        ACTIONS[outcome],
        code="ValidationException",
        message="1 validation error detected",
        count=1,
    )
    with pytest.raises(CallbackStepError) as info:
        close(fast_hook, outcome, token, arn)
    text = str(info.value)
    assert "ValidationException: 1 validation error detected" in text
    assert arn in text
    assert mask_token(token) in text
    assert token not in text
    assert attempts(emulator, outcome) == [400]
    assert emulator.step(arn, "Score")["StepStatus"] == "Executing"


@pytest.mark.parametrize("outcome", ["success", "failure"])
@pytest.mark.parametrize("code", ["ConflictException", "ResourceNotFound"])
def test_conflict_and_not_found_are_looked_up_and_count_as_done_in_the_wanted_state(
    emulator: CallbackEmulator, callback_queue: str, fast_hook: SageMakerCallbackHook, outcome: str, code: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    close(fast_hook, outcome, token, arn)  # an earlier attempt went through
    emulator.clear_requests()
    emulator.inject_fault("sagemaker", ACTIONS[outcome], code=code, count=1)
    assert close(fast_hook, outcome, token, arn) == arn
    counts = emulator.request_counts("sagemaker")
    assert counts[ACTIONS[outcome]] == 1
    assert counts["ListPipelineExecutionSteps"] == 1
    assert emulator.step(arn, "Score")["StepStatus"] == WANTED[outcome]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_conflict_with_the_step_closed_the_other_way_fails_naming_its_state(
    emulator: CallbackEmulator, callback_queue: str, fast_hook: SageMakerCallbackHook, outcome: str
) -> None:
    arn, token = open_step(emulator, callback_queue)
    close(fast_hook, "failure" if outcome == "success" else "success", token, arn)
    other: dict[str, Any] = {"success": "Failed", "failure": "Succeeded"}
    with pytest.raises(CallbackStepError, match=f"its step 'Score' is {other[outcome]}") as info:
        close(fast_hook, outcome, token, arn)
    assert mask_token(token) in str(info.value)
    assert emulator.step(arn, "Score")["StepStatus"] == other[outcome]
