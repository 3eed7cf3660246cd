"""
Closing a callback step: one defined behaviour for every error SageMaker can answer a close with.

``SendPipelineExecutionStepSuccess`` and ``SendPipelineExecutionStepFailure`` document
``ResourceNotFound``, ``ResourceLimitExceeded`` and ``ConflictException``; every AWS call can also
answer ``ValidationException``, ``ThrottlingException`` and 5xx. What the hook does with each
(the table in ``docs/design.md``):

===========================================  ==================================================
answer                                       behaviour
===========================================  ==================================================
``ThrottlingException`` (and the other       retried by botocore (``standard`` retry mode, 6
throttling codes), 5xx, connection errors    retries: 7 requests, unless the connection sets
                                             ``retries``); once those are spent, the task fails
                                             naming the execution and the masked token
``ConflictException``, ``ResourceNotFound``  looked up (``ListPipelineExecutionSteps``): the step
                                             already in the wanted state counts as done; in the
                                             other closed state the task fails naming it; still
                                             open, the same request (same ``ClientRequestToken``)
                                             again after 1, 2 and 4 s, then the task fails
``ResourceLimitExceeded``                    retried by the hook after 2, 4, 8 and 16 s (the
                                             same request), then the task fails
``ValidationException`` and any other code   the task fails at once, naming the execution, the
                                             masked token, the code and SageMaker's message
===========================================  ==================================================
"""

from __future__ import annotations

import logging
from typing import Any, Final

from botocore.exceptions import ClientError

from airflow_sm_callback.hooks._operations import Call, Mask, Op, Sleep, error_code, find_step
from airflow_sm_callback.protocol.steps import CallbackStepError
from airflow_sm_callback.protocol.tokens import Outcome, mask_token

#: Answers that mean "the step may already be closed": look it up before failing.
LOOKUP_CODES: Final = frozenset({"ConflictException", "ResourceNotFound"})
#: Close requests made while such an answer comes back for a step that is still open.
LOOKUP_ATTEMPTS: Final = 4
#: Answers the hook retries itself (botocore does not), with these delays.
RETRY_CODES: Final = frozenset({"ResourceLimitExceeded"})
RETRY_DELAYS: Final = (2.0, 4.0, 8.0, 16.0)


def close(
    log: logging.Logger,
    outcome: Outcome,
    token: str,
    request: dict[str, Any],
    execution_arn: str | None,
    *,
    retry_delays: tuple[float, ...] = RETRY_DELAYS,
) -> Op[str]:
    """
    Close a step one way, as the module's table says; return the execution ARN.

    :raises CallbackStepError: naming the execution, the masked token and what SageMaker said.
    """
    yield Mask(token)
    method = (
        "send_pipeline_execution_step_success"
        if outcome is Outcome.SUCCESS
        else "send_pipeline_execution_step_failure"
    )
    wanted = "Succeeded" if outcome is Outcome.SUCCESS else "Failed"
    where = f"callback step (token {mask_token(token)}) of {execution_arn or 'an unknown execution'}"
    lookups = retries = 0
    while True:
        try:
            response = yield Call("sagemaker", method, request)
        except ClientError as err:
            code = error_code(err)
            message = err.response.get("Error", {}).get("Message", "")
            if code in RETRY_CODES and retries < len(retry_delays):
                delay = retry_delays[retries]
                retries += 1
                log.warning("Closing %s got %s: trying again in %.0fs", where, code, delay)
                yield Sleep(delay)
                continue
            if code not in LOOKUP_CODES:
                tried = f" (after {retries + 1} requests)" if retries else ""
                raise CallbackStepError(
                    f"closing {where} as {outcome.value} failed{tried}: {code}: {message}"
                ) from err
            if execution_arn is None:
                raise CallbackStepError(
                    f"closing callback step (token {mask_token(token)}) as {outcome.value} failed with "
                    f"{code}, and the execution is not known, so whether it was already closed cannot be checked"
                ) from err
            lookups += 1
            step = yield from find_step(execution_arn, None, token)
            if step is not None and step.status == wanted:
                log.info(
                    "Callback step %s of %s was already closed as %s; nothing to do",
                    step.name,
                    execution_arn,
                    outcome.value,
                )
                return execution_arn
            state = f"its step {step.name!r} is {step.status}" if step else "no step has that token"
            if (step is not None and step.is_closed) or lookups >= LOOKUP_ATTEMPTS:
                raise CallbackStepError(
                    f"cannot close {where} as {outcome.value}: SageMaker answered {code} and {state}"
                ) from err
            # The step is still open: the answer may be passing. The same request again is safe
            # (same ClientRequestToken).
            delay = 2.0 ** (lookups - 1)
            log.warning(
                "Closing a callback step of %s got %s while %s; trying again in %.0fs",
                execution_arn,
                code,
                state,
                delay,
            )
            yield Sleep(delay)
            continue
        return response.get("PipelineExecutionArn") or execution_arn or ""
