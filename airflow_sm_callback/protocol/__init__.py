"""
The SageMaker Pipelines callback-step protocol, in plain Python: nothing here imports Airflow.

Everything that decides what a callback *is* and where it goes: parsing SQS messages
(:mod:`.message`), which callback a waiter wants (:mod:`.matching`), output parameters
(:mod:`.outputs`), tokens and close requests (:mod:`.tokens`), callback steps (:mod:`.steps`),
pipeline expressions (:mod:`.expressions`) and the routing policy on a shared queue
(:mod:`.routing`). Hooks, triggers, sensors and operators all lean on it.
"""

from __future__ import annotations

from airflow_sm_callback.protocol.matching import CallbackMatcher
from airflow_sm_callback.protocol.message import (
    MAX_BODY_BYTES,
    CallbackMessage,
    CallbackStatus,
    InvalidCallbackMessage,
    MessageDefect,
    ReceivedMessages,
    UnparsedMessage,
    parse_execution_arn,
)
from airflow_sm_callback.protocol.outputs import (
    MAX_OUTPUT_NAME,
    MAX_OUTPUT_PARAMETERS,
    MAX_OUTPUT_VALUE,
    InvalidOutputParameters,
    OutputType,
    coerce_output_value,
    encode_output_parameters,
    encode_scalar,
)
from airflow_sm_callback.protocol.steps import (
    AmbiguousCallbackStep,
    CallbackStep,
    CallbackStepError,
    callback_steps_in_definition,
)
from airflow_sm_callback.protocol.tokens import (
    MAX_FAILURE_REASON,
    Outcome,
    check_token,
    client_request_token,
    mask_token,
    truncate_failure_reason,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_FAILURE_REASON",
    "MAX_OUTPUT_NAME",
    "MAX_OUTPUT_PARAMETERS",
    "MAX_OUTPUT_VALUE",
    "AmbiguousCallbackStep",
    "CallbackMatcher",
    "CallbackMessage",
    "CallbackStatus",
    "CallbackStep",
    "CallbackStepError",
    "InvalidCallbackMessage",
    "InvalidOutputParameters",
    "MessageDefect",
    "Outcome",
    "OutputType",
    "ReceivedMessages",
    "UnparsedMessage",
    "callback_steps_in_definition",
    "check_token",
    "client_request_token",
    "coerce_output_value",
    "encode_output_parameters",
    "encode_scalar",
    "mask_token",
    "parse_execution_arn",
    "truncate_failure_reason",
]
