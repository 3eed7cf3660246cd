"""
The hook's operations, each written once as a generator of AWS requests (sans I/O).

An operation yields :class:`Call` (an AWS request; the response, or the ``ClientError``, is sent
back), :class:`Mask` (register a token with the secrets masker) and :class:`Sleep`;
:class:`~airflow_sm_callback.hooks.callback.SageMakerCallbackHook` drives it with boto3 or with
aiobotocore, so every sync method and its async twin behave the same by construction.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from botocore.exceptions import ClientError

from airflow_sm_callback.protocol import routing
from airflow_sm_callback.protocol.expressions import (
    OUTPUT_REF_RE,
    ExpressionError,
    cast_value,
    resolve,
)
from airflow_sm_callback.protocol.expressions import find_step as find_in_definition
from airflow_sm_callback.protocol.message import ReceivedMessages, parse_execution_arn
from airflow_sm_callback.protocol.outputs import OutputType, encode_output_parameters
from airflow_sm_callback.protocol.steps import (
    CallbackStep,
    CallbackStepError,
    StepDirectory,
    callback_steps_in_definition,
    select_callback_step,
)
from airflow_sm_callback.protocol.tokens import (
    Outcome,
    check_request_token,
    check_token,
    client_request_token,
    truncate_failure_reason,
)

if TYPE_CHECKING:
    from airflow_sm_callback.protocol.matching import CallbackMatcher

T = TypeVar("T")

#: SQS accepts at most this many entries in a batch call.
SQS_BATCH_SIZE: Final = 10
#: The longest SQS visibility timeout (12 hours).
MAX_VISIBILITY_TIMEOUT: Final = 43_200


@dataclass(frozen=True, slots=True)
class Call:
    """One AWS request an operation wants made."""

    service: str
    method: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Mask:
    """Register a token with the secrets masker (the async driver tells the supervisor without blocking)."""

    token: str


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait before the next request (``time.sleep`` in the sync driver, ``asyncio.sleep`` in the async one)."""

    seconds: float


Op = Generator[Call | Mask | Sleep, Any, T]


def drive(
    op: Op[T], client: Callable[[str], Any], mask: Callable[[str], None], sleep: Callable[[float], None]
) -> T:
    """Run an operation with sync clients (boto3): ``client(service)`` gives the client of a service."""
    try:
        call = next(op)
        while True:
            if isinstance(call, Mask):
                mask(call.token)
                call = op.send(None)
            elif isinstance(call, Sleep):
                sleep(call.seconds)
                call = op.send(None)
            else:
                try:
                    response = getattr(client(call.service), call.method)(**call.kwargs)
                except ClientError as err:
                    call = op.throw(err)
                else:
                    call = op.send(response)
    except StopIteration as stop:
        return stop.value


async def adrive(
    op: Op[T],
    client: Callable[[str], Awaitable[Any]],
    mask: Callable[[str], Awaitable[None]],
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    """Run an operation with async clients (aiobotocore), never blocking the event loop."""
    try:
        call = next(op)
        while True:
            if isinstance(call, Mask):
                await mask(call.token)
                call = op.send(None)
            elif isinstance(call, Sleep):
                await sleep(call.seconds)
                call = op.send(None)
            else:
                service_client = await client(call.service)
                try:
                    response = await getattr(service_client, call.method)(**call.kwargs)
                except ClientError as err:
                    call = op.throw(err)
                else:
                    call = op.send(response)
    except StopIteration as stop:
        return stop.value


def error_code(err: ClientError) -> str:
    """The error code of an AWS answer."""
    return str(err.response.get("Error", {}).get("Code", ""))


@dataclass(slots=True)
class BatchResult:
    """
    Outcome of a batched SQS call (``DeleteMessageBatch``, ``ChangeMessageVisibilityBatch``).

    :param succeeded: receipt handles the call succeeded for.
    :param failed: ``(receipt handle, error code, message)`` for every entry that failed.
    """

    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every entry succeeded."""
        return not self.failed


def single(service: str, method: str, **kwargs: Any) -> Op[Any]:
    """One request, its response returned as it is."""
    response = yield Call(service, method, kwargs)
    return response


class BoundedSet:
    """A set that forgets its oldest members beyond ``size`` (for "log once" bookkeeping)."""

    def __init__(self, size: int = 10_000) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, item: str) -> bool:
        """Add ``item``; return whether it was new."""
        if item in self._items:
            return False
        self._items[item] = None
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return True


# -- SQS -----------------------------------------------------------------------------------------


def receive(
    queue_url: str, max_messages: int, wait_time_seconds: int, visibility_timeout: int | None
) -> Op[ReceivedMessages]:
    """``ReceiveMessage``, parsed into callbacks and unusable messages."""
    if not 1 <= max_messages <= SQS_BATCH_SIZE:
        raise ValueError(f"max_messages must be 1..10, got {max_messages}")
    if not 0 <= wait_time_seconds <= 20:
        raise ValueError(f"wait_time_seconds must be 0..20, got {wait_time_seconds}")
    kwargs: dict[str, Any] = {
        "QueueUrl": queue_url,
        "MaxNumberOfMessages": max_messages,
        "WaitTimeSeconds": wait_time_seconds,
        "MessageSystemAttributeNames": [
            "ApproximateReceiveCount",
            "SentTimestamp",
            "ApproximateFirstReceiveTimestamp",
        ],
    }
    if visibility_timeout is not None:
        kwargs["VisibilityTimeout"] = visibility_timeout
    response = yield Call("sqs", "receive_message", kwargs)
    return ReceivedMessages.parse(response.get("Messages") or [])


def _collect(handles: list[str], response: Mapping[str, Any], result: BatchResult) -> None:
    failed_ids = set()
    for failure in response.get("Failed") or []:
        index = int(failure["Id"])
        failed_ids.add(index)
        result.failed.append((handles[index], failure.get("Code", ""), failure.get("Message", "")))
    result.succeeded.extend(h for i, h in enumerate(handles) if i not in failed_ids)


def _report(log: logging.Logger, action: str, queue_url: str, result: BatchResult) -> None:
    for _, code, message in result.failed:
        log.warning("%s failed for a message on %s: %s %s", action, queue_url, code, message)


def change_visibility(
    log: logging.Logger, queue_url: str, entries: Sequence[tuple[str, int]]
) -> Op[BatchResult]:
    """``ChangeMessageVisibilityBatch``, ten entries a request."""
    result = BatchResult()
    for start in range(0, len(entries), SQS_BATCH_SIZE):
        chunk = entries[start : start + SQS_BATCH_SIZE]
        request = [
            {
                "Id": str(i),
                "ReceiptHandle": handle,
                "VisibilityTimeout": max(0, min(MAX_VISIBILITY_TIMEOUT, int(seconds))),
            }
            for i, (handle, seconds) in enumerate(chunk)
        ]
        response = yield Call(
            "sqs", "change_message_visibility_batch", {"QueueUrl": queue_url, "Entries": request}
        )
        _collect([handle for handle, _ in chunk], response, result)
    _report(log, "ChangeMessageVisibilityBatch", queue_url, result)
    return result


def delete(log: logging.Logger, queue_url: str, receipt_handles: Sequence[str]) -> Op[BatchResult]:
    """``DeleteMessageBatch``, ten messages a request."""
    result = BatchResult()
    for start in range(0, len(receipt_handles), SQS_BATCH_SIZE):
        chunk = list(receipt_handles[start : start + SQS_BATCH_SIZE])
        request = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(chunk)]
        response = yield Call("sqs", "delete_message_batch", {"QueueUrl": queue_url, "Entries": request})
        _collect(chunk, response, result)
    _report(log, "DeleteMessageBatch", queue_url, result)
    return result


def apply(log: logging.Logger, queue_url: str, decisions: Sequence[routing.Decision]) -> Op[None]:
    """Carry out routing decisions: one visibility change and one delete for the lot."""
    deletes, changes = routing.visibility_changes(decisions)
    if changes:
        yield from change_visibility(log, queue_url, changes)
    if deletes:
        yield from delete(log, queue_url, deletes)


# -- the standalone poll -------------------------------------------------------------------------


def poll(
    log: logging.Logger,
    steps: StepDirectory,
    handoffs: routing.HandOffKnowledge,
    queue_url: str,
    matcher: CallbackMatcher,
    *,
    wait_time_seconds: int,
    handoff_visibility: int,
    max_receives: int,
    max_lookups: int,
    warn: Any = None,
) -> Op[routing.Delivery | None]:
    """
    Receive and take the first callback ``matcher`` wants, routing the rest by the routing policy.

    One long poll, then more receives while they come back full and nothing was taken (at most
    ``max_receives``). At most ``max_lookups`` step look-ups, made at once when the policy asks.
    """
    knowledge = routing.Knowledge(steps, handoffs)
    budget = max_lookups
    for attempt in range(max_receives):
        received = yield from receive(
            queue_url, SQS_BATCH_SIZE, wait_time_seconds if attempt == 0 else 0, None
        )
        if not len(received):
            return None
        batch = routing.sort([received], knowledge)
        if warn is not None:
            for bad in batch.invalid:
                warn(bad, queue_url)
        taken: routing.Delivery | None = None
        for delivery in batch.deliveries:
            want, name = routing.wants(matcher, delivery, knowledge)
            if want is routing.Want.LOOK_UP and budget > 0:
                budget -= 1
                yield from lookup(log, steps, delivery.callback.pipeline_execution_arn)
                want, name = routing.wants(matcher, delivery, knowledge)
            if want is routing.Want.YES:
                taken = replace(delivery, callback=delivery.callback.with_step_name(name))
                break
        decisions: list[routing.Decision] = []
        for delivery in batch.deliveries:
            if taken is not None and delivery.token == taken.token:
                claim = routing.Claim("poll", hold=handoff_visibility, step_name=taken.callback.step_name)
                decisions.append(routing.decide(delivery, claim, knowledge))
                continue
            decision = routing.decide(delivery, None, knowledge)
            if decision.lookup is not None and budget > 0:
                budget -= 1
                yield from lookup(log, steps, decision.lookup)
                decision = routing.decide(delivery, None, knowledge)
            decisions.append(decision)
        decisions.extend(routing.decide_invalid(bad) for bad in batch.invalid)
        if batch.copies:
            decisions.append(routing.Decision(routing.Verdict.DELETE, routing.Reason.COPY, batch.copies))
        yield from apply(log, queue_url, decisions)
        if taken is not None:
            return taken
        if len(received) < SQS_BATCH_SIZE:
            return None
    return None


# -- SageMaker: steps ----------------------------------------------------------------------------


def list_steps(execution_arn: str, page_size: int) -> Op[list[dict[str, Any]]]:
    """``ListPipelineExecutionSteps``, every page."""
    steps: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "MaxResults": page_size}
    while True:
        response = yield Call("sagemaker", "list_pipeline_execution_steps", kwargs)
        steps.extend(response.get("PipelineExecutionSteps") or [])
        next_token = response.get("NextToken")
        if not next_token:
            return steps
        kwargs = {**kwargs, "NextToken": next_token}


def callback_steps(execution_arn: str, page_size: int = 100) -> Op[list[CallbackStep]]:
    """Every callback step of an execution, newest first; their tokens are masked."""
    raw = yield from list_steps(execution_arn, page_size)
    steps = [s for s in (CallbackStep.from_api(item) for item in raw) if s is not None]
    # Newest first, whatever order the service used.
    steps.sort(key=lambda s: (s.started_at is not None, s.started_at), reverse=True)
    for step in steps:
        if step.token:
            yield Mask(step.token)
    return steps


def find_step(execution_arn: str, step_name: str | None, token: str | None) -> Op[CallbackStep | None]:
    """One callback step, by token, by name, or the one open (see :func:`select_callback_step`)."""
    steps = yield from callback_steps(execution_arn)
    return select_callback_step(steps, execution_arn=execution_arn, step_name=step_name, token=token)


def lookup(log: logging.Logger, directory: StepDirectory, execution_arn: str) -> Op[None]:
    """Refresh ``directory`` from one listing of the execution; a failed look-up changes nothing."""
    try:
        steps = yield from callback_steps(execution_arn)
    except ClientError as err:
        log.info(
            "Could not list the steps of %s (%s); its messages are handed back, not deleted",
            execution_arn,
            error_code(err),
        )
        return
    directory.record(steps)


def output_types(
    cache: dict[str, dict[str, dict[str, OutputType]]], execution_arn: str
) -> Op[dict[str, dict[str, OutputType]]]:
    """The callback steps of the execution's definition with their declared outputs (cached)."""
    if execution_arn in cache:
        return cache[execution_arn]
    response = yield Call(
        "sagemaker", "describe_pipeline_definition_for_execution", {"PipelineExecutionArn": execution_arn}
    )
    found = callback_steps_in_definition(response.get("PipelineDefinition") or "{}")
    cache[execution_arn] = found
    return found


def stop(execution_arn: str, client_request_token: str | None) -> Op[None]:
    """``StopPipelineExecution`` (idempotent with ``client_request_token``)."""
    kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn}
    if client_request_token:
        kwargs["ClientRequestToken"] = check_request_token(client_request_token)
    yield Call("sagemaker", "stop_pipeline_execution", kwargs)


def resolve_arguments(execution_arn: str, step_name: str) -> Op[dict[str, Any]]:
    """Rebuild a step's ``arguments`` as SageMaker resolved them, from the execution's state."""
    definition_response = yield Call(
        "sagemaker", "describe_pipeline_definition_for_execution", {"PipelineExecutionArn": execution_arn}
    )
    definition = json.loads(definition_response.get("PipelineDefinition") or "{}")
    step = find_step_definition(definition, step_name, execution_arn)
    declared = {p.get("Name"): p for p in definition.get("Parameters") or []}
    values: dict[str, Any] = {name: p.get("DefaultValue") for name, p in declared.items()}
    kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn}
    while True:
        page = yield Call("sagemaker", "list_pipeline_parameters_for_execution", kwargs)
        for parameter in page.get("PipelineParameters") or []:
            values[parameter["Name"]] = parameter.get("Value")
        if not page.get("NextToken"):
            break
        kwargs = {**kwargs, "NextToken": page["NextToken"]}
    parameters = {
        name: cast_value(value, declared.get(name, {}).get("Type", "String")) if value is not None else None
        for name, value in values.items()
    }
    execution = yield Call(
        "sagemaker", "describe_pipeline_execution", {"PipelineExecutionArn": execution_arn}
    )
    steps = yield from callback_steps(execution_arn)
    outputs = {s.name: s.output_parameters for s in steps if s.status == "Succeeded"}
    types = callback_steps_in_definition(definition)
    _, _, pipeline_name, execution_id = parse_execution_arn(execution_arn)
    variables = {
        "PipelineExecutionId": execution_id,
        "PipelineExecutionArn": execution_arn,
        "PipelineName": pipeline_name,
        "PipelineExecutionDisplayName": execution.get("PipelineExecutionDisplayName", ""),
    }

    def get(path: str) -> Any:
        if path.startswith("Parameters."):
            return parameters.get(path.removeprefix("Parameters."))
        if path.startswith("Execution."):
            return variables.get(path.removeprefix("Execution."))
        match = OUTPUT_REF_RE.fullmatch(path)
        if match and match.group(3) in outputs.get(match.group(1), {}):
            kind = types.get(match.group(1), {}).get(match.group(3), OutputType.STRING)
            return cast_value(outputs[match.group(1)][match.group(3)], kind.value)
        raise ExpressionError(f"cannot resolve {path!r} after the fact")

    arguments = resolve(step.get("Arguments") or {}, get)
    return arguments if isinstance(arguments, dict) else {}


def find_step_definition(definition: Mapping[str, Any], step_name: str, execution_arn: str) -> dict[str, Any]:
    """The step called ``step_name`` in an execution's definition."""
    step = find_in_definition(definition, step_name)
    if step is None:
        raise CallbackStepError(f"{step_name!r} is not a step of the pipeline of {execution_arn}")
    return step


# -- SageMaker: closing a step -------------------------------------------------------------------


def success_request(
    token: str,
    output_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    declared: Mapping[str, OutputType | str] | None,
    crt: str | None,
) -> dict[str, Any]:
    """A validated ``SendPipelineExecutionStepSuccess`` request (nothing is sent before this passes)."""
    check_token(token)
    params = encode_output_parameters(output_parameters, declared)
    crt = check_request_token(crt or client_request_token(callback_token=token, outcome=Outcome.SUCCESS))
    return {"CallbackToken": token, "OutputParameters": params, "ClientRequestToken": crt}


def failure_request(token: str, reason: object, crt: str | None) -> dict[str, Any]:
    """A validated ``SendPipelineExecutionStepFailure`` request, its reason cut to 256 characters."""
    check_token(token)
    crt = check_request_token(crt or client_request_token(callback_token=token, outcome=Outcome.FAILURE))
    return {
        "CallbackToken": token,
        "FailureReason": truncate_failure_reason(reason),
        "ClientRequestToken": crt,
    }
