"""
SageMakerCallbackHook: the SQS and SageMaker calls that carry meaning for callback steps.

Every operation is written once, as a generator of AWS requests (:class:`_Call`) that receives
each response back; :meth:`SageMakerCallbackHook._run` drives it with boto3 and
:meth:`SageMakerCallbackHook._run_async` with aiobotocore, so the sync and async methods have the
same semantics by construction.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Final, TypeVar

import botocore.config
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from asgiref.sync import sync_to_async
from botocore.exceptions import ClientError

from airflow_sm_callback.callback import (
    CLOSED_STEP_STATUSES,
    AmbiguousCallbackStep,
    CallbackMatcher,
    CallbackMessage,
    CallbackStatus,
    CallbackStep,
    CallbackStepError,
    InvalidOutputParameters,
    Outcome,
    OutputType,
    ReceivedMessages,
    UnparsedMessage,
    callback_steps_in_definition,
    check_token,
    client_request_token,
    encode_output_parameters,
    mask_token,
    parse_execution_arn,
    register_token,
    register_token_async,
    truncate_failure_reason,
)
from airflow_sm_callback.protocol.expressions import OUTPUT_REF_RE, ExpressionError, cast_value, find_step, resolve

T = TypeVar("T")

#: SQS accepts at most this many entries in a batch call.
SQS_BATCH_SIZE: Final = 10
#: The longest SQS visibility timeout (12 hours).
MAX_VISIBILITY_TIMEOUT: Final = 43_200
#: Retry policy used unless the connection or ``botocore_config`` sets one.
DEFAULT_RETRY_MODE: Final = "standard"
DEFAULT_MAX_ATTEMPTS: Final = 6
#: Error codes that mean "the step may already be closed": look it up before failing.
CLOSE_CONFLICT_CODES: Final = frozenset({"ConflictException", "ResourceNotFound"})
#: Close requests made while such an answer comes back for a step that is still open.
CLOSE_ATTEMPTS: Final = 4


@dataclass(frozen=True, slots=True)
class _Call:
    """One AWS request an operation wants made."""

    service: str
    method: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Mask:
    """Register a token with the secrets masker (the async driver tells the supervisor without blocking)."""

    token: str


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Wait before the next request (``time.sleep`` in the sync driver, ``asyncio.sleep`` in the async one)."""

    seconds: float


_Op = Generator[_Call | _Mask | _Sleep, Any, T]


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


def backoff_visibility(receive_count: int, *, cap: int = 60) -> int:
    """
    Visibility timeout for handing back a message nobody here wants.

    The first hand-back is immediate (another waiter, perhaps in another process, may want it);
    later ones grow with the receive count (1, 2, 4, ... seconds, at most ``cap``) so a message
    that nobody wants yet does not cycle.
    """
    if receive_count <= 1:
        return 0
    return int(min(cap, 2 ** min(receive_count - 2, 16)))


class _BoundedSet:
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


@dataclass(frozen=True, slots=True)
class StepState:
    """What ``ListPipelineExecutionSteps`` last said of the step that owns a token."""

    name: str
    status: str
    checked_at: float

    @property
    def closed(self) -> bool:
        """Whether the step is closed for good (a message for it is stale)."""
        return self.status in CLOSED_STEP_STATUSES


class StepDirectory:
    """
    Maps callback tokens to their steps, from ``ListPipelineExecutionSteps`` (one listing per
    execution serves every token in it).

    A closed step stays closed, so that answer is kept; an open one is re-checked after ``ttl``
    seconds. Bounded to ``max_entries`` tokens.
    """

    def __init__(self, ttl: float = 30.0, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self._states: OrderedDict[str, StepState] = OrderedDict()
        self._max = max_entries

    def get(self, token: str) -> StepState | None:
        """The last known state of the step that owns ``token``."""
        return self._states.get(token)

    def is_fresh(self, token: str) -> bool:
        """Whether the known state is good enough without a new look-up."""
        state = self._states.get(token)
        return state is not None and (state.closed or time.monotonic() - state.checked_at < self.ttl)

    def record(self, steps: Iterable[CallbackStep]) -> None:
        """Remember the steps of one listing."""
        now = time.monotonic()
        for step in steps:
            if step.token:
                self._states[step.token] = StepState(step.name, step.status, now)
                self._states.move_to_end(step.token)
        while len(self._states) > self._max:
            self._states.popitem(last=False)


@dataclass(slots=True)
class Claim:
    """
    A callback taken off the queue for one waiter, with every receipt handle that carried its
    token in the same receive (a duplicate, or the ``Stopping`` message beside the
    ``Executing`` one). The messages stay hidden until :meth:`SageMakerCallbackHook.complete_handoff`
    deletes them, after the token was handed on.
    """

    callback: CallbackMessage
    receipt_handles: list[str] = field(default_factory=list)

    def add(self, other: CallbackMessage) -> None:
        """Fold another message with the same token into the claim (``Stopping`` wins)."""
        if other.receipt_handle:
            self.receipt_handles.append(other.receipt_handle)
        if other.is_stopping and not self.callback.is_stopping:
            self.callback = replace(self.callback, status=CallbackStatus.STOPPING)


@dataclass(slots=True)
class RoutePlan:
    """What to do with the messages of one receive that were not claimed."""

    release: list[tuple[str, int]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


class SageMakerCallbackHook(AwsBaseHook):
    """
    Receive SageMaker Pipelines callback messages and close callback steps.

    Thin layer over :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`: one
    connection (credentials, region, endpoint, ``botocore_config``) serves both the SQS queue and
    SageMaker. Every method has an ``*_async`` twin (aiobotocore, for triggers) with the same
    semantics. Throttling and 5xx answers are retried by botocore's retry mode (``standard``
    with 6 attempts unless the connection's ``config_kwargs`` or ``config`` sets ``retries``).

    Every callback token the hook handles is registered with Airflow's secrets masker.

    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: Whether to verify SSL certificates (or a CA bundle path).
    :param config: botocore ``Config`` (or its kwargs) for the clients.
    """

    hook_name = "Amazon SageMaker Pipelines callback"
    #: ``MaxResults`` of one ``ListPipelineExecutionSteps`` page.
    list_page_size: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker"
        super().__init__(*args, **kwargs)
        self._async_clients: dict[str, Any] = {}
        self._async_lock: asyncio.Lock | None = None
        self._output_types_cache: dict[str, dict[str, dict[str, OutputType]]] = {}
        #: What this hook knows of the steps behind tokens it has seen.
        self.steps = StepDirectory()
        self._warned = _BoundedSet()

    # ------------------------------------------------------------------------------------------
    # Clients
    # ------------------------------------------------------------------------------------------

    @property
    def config(self) -> botocore.config.Config:
        """botocore config: the connection's, with a ``standard`` retry mode unless it sets one."""
        config = super().config
        if getattr(config, "retries", None):
            return config
        return config.merge(
            botocore.config.Config(retries={"mode": DEFAULT_RETRY_MODE, "max_attempts": DEFAULT_MAX_ATTEMPTS})
        )

    def _client_for(self, service: str, deferrable: bool = False) -> Any:
        """A boto3 (or, ``deferrable``, an aiobotocore creator) client for ``service``."""
        session = self.get_session(region_name=self.region_name, deferrable=deferrable)
        kwargs = {
            "service_name": service,
            "endpoint_url": self.conn_config.get_service_endpoint_url(service_name=service),
            "config": self._get_config(),
            "verify": self.verify,
        }
        if deferrable:
            return session.create_client(**kwargs)
        return session.client(**kwargs)

    @cached_property
    def sqs_client(self) -> Any:
        """The boto3 SQS client (same connection as the SageMaker one)."""
        return self._client_for("sqs")

    def _sync_client(self, service: str) -> Any:
        return self.sqs_client if service == "sqs" else self.conn

    async def _async_client(self, service: str) -> Any:
        """An open aiobotocore client for ``service``, kept for the hook's life (see :meth:`aclose`)."""
        if service in self._async_clients:
            return self._async_clients[service]
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            if service not in self._async_clients:
                creator = await sync_to_async(self._client_for)(service, True)
                self._async_clients[service] = await creator.__aenter__()
        return self._async_clients[service]

    async def aclose(self) -> None:
        """Close the async clients this hook opened."""
        clients, self._async_clients = self._async_clients, {}
        for client in clients.values():
            await client.__aexit__(None, None, None)

    async def __aenter__(self) -> SageMakerCallbackHook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------
    # Drivers
    # ------------------------------------------------------------------------------------------

    def _run(self, op: _Op[T]) -> T:
        try:
            call = next(op)
            while True:
                if isinstance(call, _Mask):
                    register_token(call.token)
                    call = op.send(None)
                    continue
                if isinstance(call, _Sleep):
                    time.sleep(call.seconds)
                    call = op.send(None)
                    continue
                try:
                    response = getattr(self._sync_client(call.service), call.method)(**call.kwargs)
                except ClientError as err:
                    call = op.throw(err)
                else:
                    call = op.send(response)
        except StopIteration as stop:
            return stop.value

    async def _run_async(self, op: _Op[T]) -> T:
        try:
            call = next(op)
            while True:
                if isinstance(call, _Mask):
                    await register_token_async(call.token)
                    call = op.send(None)
                    continue
                if isinstance(call, _Sleep):
                    await asyncio.sleep(call.seconds)
                    call = op.send(None)
                    continue
                client = await self._async_client(call.service)
                try:
                    response = await getattr(client, call.method)(**call.kwargs)
                except ClientError as err:
                    call = op.throw(err)
                else:
                    call = op.send(response)
        except StopIteration as stop:
            return stop.value

    # ------------------------------------------------------------------------------------------
    # Masking
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def mask(token: str | None) -> None:
        """Register a callback token with Airflow's secrets masker, from sync code (no-op for ``None``)."""
        if token:
            register_token(token)

    @staticmethod
    async def mask_async(token: str | None) -> None:
        """Register a callback token with Airflow's secrets masker, from async code."""
        if token:
            await register_token_async(token)

    # ------------------------------------------------------------------------------------------
    # Operations (each a generator of calls)
    # ------------------------------------------------------------------------------------------

    def _receive_op(
        self,
        queue_url: str,
        max_messages: int,
        wait_time_seconds: int,
        visibility_timeout: int | None,
    ) -> _Op[ReceivedMessages]:
        if not 1 <= max_messages <= SQS_BATCH_SIZE:
            raise ValueError(f"max_messages must be 1..10, got {max_messages}")
        if not 0 <= wait_time_seconds <= 20:
            raise ValueError(f"wait_time_seconds must be 0..20, got {wait_time_seconds}")
        kwargs: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_time_seconds,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = visibility_timeout
        response = yield _Call("sqs", "receive_message", kwargs)
        return ReceivedMessages.parse(response.get("Messages") or [])

    def _change_visibility_op(self, queue_url: str, entries: Sequence[tuple[str, int]]) -> _Op[BatchResult]:
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
            response = yield _Call(
                "sqs", "change_message_visibility_batch", {"QueueUrl": queue_url, "Entries": request}
            )
            self._collect_batch([handle for handle, _ in chunk], response, result)
        self._report_batch("ChangeMessageVisibilityBatch", queue_url, result)
        return result

    def _delete_op(self, queue_url: str, receipt_handles: Sequence[str]) -> _Op[BatchResult]:
        result = BatchResult()
        for start in range(0, len(receipt_handles), SQS_BATCH_SIZE):
            chunk = list(receipt_handles[start : start + SQS_BATCH_SIZE])
            request = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(chunk)]
            response = yield _Call("sqs", "delete_message_batch", {"QueueUrl": queue_url, "Entries": request})
            self._collect_batch(chunk, response, result)
        self._report_batch("DeleteMessageBatch", queue_url, result)
        return result

    @staticmethod
    def _collect_batch(handles: list[str], response: Mapping[str, Any], result: BatchResult) -> None:
        failed_ids = set()
        for failure in response.get("Failed") or []:
            index = int(failure["Id"])
            failed_ids.add(index)
            result.failed.append((handles[index], failure.get("Code", ""), failure.get("Message", "")))
        result.succeeded.extend(h for i, h in enumerate(handles) if i not in failed_ids)

    def _report_batch(self, action: str, queue_url: str, result: BatchResult) -> None:
        for _, code, message in result.failed:
            self.log.warning("%s failed for a message on %s: %s %s", action, queue_url, code, message)

    def _list_steps_op(self, execution_arn: str) -> _Op[list[dict[str, Any]]]:
        steps: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "MaxResults": self.list_page_size}
        while True:
            response = yield _Call("sagemaker", "list_pipeline_execution_steps", kwargs)
            steps.extend(response.get("PipelineExecutionSteps") or [])
            next_token = response.get("NextToken")
            if not next_token:
                return steps
            kwargs = {**kwargs, "NextToken": next_token}

    def _callback_steps_op(self, execution_arn: str) -> _Op[list[CallbackStep]]:
        raw = yield from self._list_steps_op(execution_arn)
        steps = [s for s in (CallbackStep.from_api(item) for item in raw) if s is not None]
        # Newest first, whatever order the service used.
        steps.sort(key=lambda s: (s.started_at is not None, s.started_at), reverse=True)
        for step in steps:
            if step.token:
                yield _Mask(step.token)
        return steps

    def _find_step_op(
        self, execution_arn: str, step_name: str | None, token: str | None
    ) -> _Op[CallbackStep | None]:
        steps = yield from self._callback_steps_op(execution_arn)
        return select_callback_step(steps, execution_arn=execution_arn, step_name=step_name, token=token)

    def _close_op(
        self,
        outcome: Outcome,
        token: str,
        request: dict[str, Any],
        execution_arn: str | None,
    ) -> _Op[str]:
        yield _Mask(token)
        method = (
            "send_pipeline_execution_step_success"
            if outcome is Outcome.SUCCESS
            else "send_pipeline_execution_step_failure"
        )
        wanted = "Succeeded" if outcome is Outcome.SUCCESS else "Failed"
        for attempt in range(CLOSE_ATTEMPTS):
            try:
                response = yield _Call("sagemaker", method, request)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code not in CLOSE_CONFLICT_CODES:
                    raise CallbackStepError(
                        f"closing callback step (token {mask_token(token)}) of "
                        f"{execution_arn or 'an unknown execution'} as {outcome.value} failed: {code}: "
                        f"{err.response.get('Error', {}).get('Message', '')}"
                    ) from err
                if execution_arn is None:
                    raise CallbackStepError(
                        f"closing callback step (token {mask_token(token)}) as {outcome.value} failed with "
                        f"{code}, and the execution is not known, so whether it was already closed cannot be checked"
                    ) from err
                step = yield from self._find_step_op(execution_arn, None, token)
                if step is not None and step.status == wanted:
                    self.log.info(
                        "Callback step %s of %s was already closed as %s; nothing to do",
                        step.name,
                        execution_arn,
                        outcome.value,
                    )
                    return execution_arn
                state = f"its step {step.name!r} is {step.status}" if step else "no step has that token"
                if (step is not None and step.is_closed) or attempt == CLOSE_ATTEMPTS - 1:
                    raise CallbackStepError(
                        f"cannot close callback step (token {mask_token(token)}) of {execution_arn} as "
                        f"{outcome.value}: SageMaker answered {code} and {state}"
                    ) from err
                # The step is still open: the answer may be passing. The same request again is safe
                # (same ClientRequestToken).
                delay = 2.0**attempt
                self.log.warning(
                    "Closing a callback step of %s got %s while %s; trying again in %.0fs",
                    execution_arn,
                    code,
                    state,
                    delay,
                )
                yield _Sleep(delay)
                continue
            return response.get("PipelineExecutionArn") or execution_arn or ""
        raise AssertionError("unreachable")

    def _output_types_op(self, execution_arn: str) -> _Op[dict[str, dict[str, OutputType]]]:
        if execution_arn in self._output_types_cache:
            return self._output_types_cache[execution_arn]
        response = yield _Call(
            "sagemaker",
            "describe_pipeline_definition_for_execution",
            {"PipelineExecutionArn": execution_arn},
        )
        found = callback_steps_in_definition(response.get("PipelineDefinition") or "{}")
        self._output_types_cache[execution_arn] = found
        return found

    def warn_invalid(self, message: UnparsedMessage, queue_url: str) -> None:
        """Log a message that is not a usable callback, once per message id, at warning."""
        if self._warned.add(message.message_id or ""):
            self.log.warning(
                "Leaving a message on %s that is not a usable callback for other consumers: %s",
                queue_url,
                message.error,
            )

    def _lookup_op(self, execution_arn: str) -> _Op[None]:
        """Refresh :attr:`steps` from one listing of the execution; a failed look-up changes nothing."""
        try:
            steps = yield from self._callback_steps_op(execution_arn)
        except ClientError as err:
            self.log.info(
                "Could not list the steps of %s (%s); its messages are handed back, not deleted",
                execution_arn,
                err.response.get("Error", {}).get("Code", ""),
            )
            return
        self.steps.record(steps)

    def _route_op(
        self,
        queue_url: str,
        received: ReceivedMessages,
        matcher: CallbackMatcher | None,
        lookups: int,
    ) -> _Op[tuple[Claim | None, RoutePlan, int]]:
        """
        Decide, for one receive, which callback (if any) ``matcher`` takes and what happens to the rest.

        The first message that matches is claimed (with any other message of the same token);
        a message whose step is known to be closed is deleted; everything else is handed back,
        at once the first time and with a growing delay after (:func:`backoff_visibility`).
        Malformed and foreign messages are handed back and logged once, never deleted.
        At most ``lookups`` step look-ups are made; the count left is returned.
        """
        plan = RoutePlan()
        for bad in received.invalid:
            self.warn_invalid(bad, queue_url)
            if bad.receipt_handle:
                plan.release.append((bad.receipt_handle, backoff_visibility(bad.receive_count)))
        claim: Claim | None = None
        if matcher is not None:
            for callback in received.callbacks:
                if not matcher.matches_message(callback):
                    continue
                if matcher.needs_step_name and not self.steps.get(callback.token) and lookups > 0:
                    lookups -= 1
                    yield from self._lookup_op(callback.pipeline_execution_arn)
                state = self.steps.get(callback.token)
                if state is not None and state.closed:
                    continue
                if matcher.matches(callback, step_name=state.name if state else None):
                    claim = Claim(callback.with_step_name(state.name if state else None), [])
                    break
        for callback in received.callbacks:
            if callback.receipt_handle is None:
                continue
            if claim is not None and callback.token == claim.callback.token:
                claim.add(callback)
                continue
            if not self.steps.is_fresh(callback.token) and callback.receive_count >= 2 and lookups > 0:
                lookups -= 1
                yield from self._lookup_op(callback.pipeline_execution_arn)
            state = self.steps.get(callback.token)
            if state is not None and state.closed:
                plan.delete.append(callback.receipt_handle)
            else:
                plan.release.append((callback.receipt_handle, backoff_visibility(callback.receive_count)))
        return claim, plan, lookups

    def _poll_op(
        self,
        queue_url: str,
        matcher: CallbackMatcher,
        wait_time_seconds: int,
        handoff_visibility: int,
        max_receives: int,
        max_lookups: int,
    ) -> _Op[Claim | None]:
        lookups = max_lookups
        for attempt in range(max_receives):
            received = yield from self._receive_op(
                queue_url, SQS_BATCH_SIZE, wait_time_seconds if attempt == 0 else 0, None
            )
            if not len(received):
                return None
            claim, plan, lookups = yield from self._route_op(queue_url, received, matcher, lookups)
            entries = list(plan.release)
            if claim is not None:
                entries.extend((handle, handoff_visibility) for handle in claim.receipt_handles)
            if entries:
                yield from self._change_visibility_op(queue_url, entries)
            if plan.delete:
                yield from self._delete_op(queue_url, plan.delete)
            if claim is not None:
                return claim
            if len(received) < SQS_BATCH_SIZE:
                return None
        return None

    def _resolve_arguments_op(self, execution_arn: str, step_name: str) -> _Op[dict[str, Any]]:
        definition_response = yield _Call(
            "sagemaker", "describe_pipeline_definition_for_execution", {"PipelineExecutionArn": execution_arn}
        )
        definition = json.loads(definition_response.get("PipelineDefinition") or "{}")
        step = find_step(definition, step_name)
        if step is None:
            raise CallbackStepError(f"{step_name!r} is not a step of the pipeline of {execution_arn}")
        declared = {p.get("Name"): p for p in definition.get("Parameters") or []}
        values: dict[str, Any] = {name: p.get("DefaultValue") for name, p in declared.items()}
        kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn}
        while True:
            page = yield _Call("sagemaker", "list_pipeline_parameters_for_execution", kwargs)
            for parameter in page.get("PipelineParameters") or []:
                values[parameter["Name"]] = parameter.get("Value")
            if not page.get("NextToken"):
                break
            kwargs = {**kwargs, "NextToken": page["NextToken"]}
        parameters = {
            name: cast_value(value, declared.get(name, {}).get("Type", "String"))
            if value is not None
            else None
            for name, value in values.items()
        }
        execution = yield _Call(
            "sagemaker", "describe_pipeline_execution", {"PipelineExecutionArn": execution_arn}
        )
        steps = yield from self._callback_steps_op(execution_arn)
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

    # ------------------------------------------------------------------------------------------
    # Request building (shared by sync and async)
    # ------------------------------------------------------------------------------------------

    def _success_request(
        self,
        token: str,
        output_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        declared: Mapping[str, OutputType | str] | None,
        crt: str | None,
    ) -> dict[str, Any]:
        check_token(token)
        params = encode_output_parameters(output_parameters, declared)
        crt = check_request_token(crt or client_request_token(callback_token=token, outcome=Outcome.SUCCESS))
        return {"CallbackToken": token, "OutputParameters": params, "ClientRequestToken": crt}

    def _failure_request(self, token: str, reason: object, crt: str | None) -> dict[str, Any]:
        check_token(token)
        crt = check_request_token(crt or client_request_token(callback_token=token, outcome=Outcome.FAILURE))
        return {
            "CallbackToken": token,
            "FailureReason": truncate_failure_reason(reason),
            "ClientRequestToken": crt,
        }

    # ------------------------------------------------------------------------------------------
    # Public API: SQS
    # ------------------------------------------------------------------------------------------

    def receive_callbacks(
        self,
        queue_url: str,
        *,
        max_messages: int = SQS_BATCH_SIZE,
        wait_time_seconds: int = 20,
        visibility_timeout: int | None = None,
    ) -> ReceivedMessages:
        """
        Receive up to ``max_messages`` messages with long polling (``ReceiveMessage``).

        :return: parsed callbacks and unparseable messages, apart. Nothing is deleted or released.
        """
        return self._run(self._receive_op(queue_url, max_messages, wait_time_seconds, visibility_timeout))

    async def receive_callbacks_async(
        self,
        queue_url: str,
        *,
        max_messages: int = SQS_BATCH_SIZE,
        wait_time_seconds: int = 20,
        visibility_timeout: int | None = None,
    ) -> ReceivedMessages:
        """Async :meth:`receive_callbacks`."""
        return await self._run_async(
            self._receive_op(queue_url, max_messages, wait_time_seconds, visibility_timeout)
        )

    def change_visibility(self, queue_url: str, entries: Sequence[tuple[str, int]]) -> BatchResult:
        """
        Set the visibility timeout of received messages (``ChangeMessageVisibilityBatch``).

        :param entries: ``(receipt handle, seconds)``; 0 hands a message back at once, a larger
            value extends the time it stays hidden.
        :return: a :class:`BatchResult`; failed entries are also logged at warning.
        """
        return self._run(self._change_visibility_op(queue_url, entries))

    async def change_visibility_async(
        self, queue_url: str, entries: Sequence[tuple[str, int]]
    ) -> BatchResult:
        """Async :meth:`change_visibility`."""
        return await self._run_async(self._change_visibility_op(queue_url, entries))

    def release_messages(self, queue_url: str, receipt_handles: Iterable[str], delay: int = 0) -> BatchResult:
        """Hand messages back to the queue after ``delay`` seconds (``ChangeMessageVisibilityBatch``)."""
        return self.change_visibility(queue_url, [(h, delay) for h in receipt_handles])

    async def release_messages_async(
        self, queue_url: str, receipt_handles: Iterable[str], delay: int = 0
    ) -> BatchResult:
        """Async :meth:`release_messages`."""
        return await self.change_visibility_async(queue_url, [(h, delay) for h in receipt_handles])

    def extend_visibility(self, queue_url: str, receipt_handles: Iterable[str], seconds: int) -> BatchResult:
        """Keep messages hidden for ``seconds`` more (``ChangeMessageVisibilityBatch``)."""
        return self.change_visibility(queue_url, [(h, seconds) for h in receipt_handles])

    async def extend_visibility_async(
        self, queue_url: str, receipt_handles: Iterable[str], seconds: int
    ) -> BatchResult:
        """Async :meth:`extend_visibility`."""
        return await self.change_visibility_async(queue_url, [(h, seconds) for h in receipt_handles])

    def delete_messages(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """
        Delete messages (``DeleteMessageBatch``, 10 a request).

        :return: a :class:`BatchResult`; a partial failure is in ``failed`` and logged at warning.
        """
        return self._run(self._delete_op(queue_url, receipt_handles))

    async def delete_messages_async(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Async :meth:`delete_messages`."""
        return await self._run_async(self._delete_op(queue_url, receipt_handles))

    def poll_for_callback(
        self,
        queue_url: str,
        matcher: CallbackMatcher,
        *,
        wait_time_seconds: int = 20,
        handoff_visibility: int = 900,
        max_receives: int = 10,
        max_lookups: int = 2,
    ) -> Claim | None:
        """
        Receive from a shared queue and take the first callback ``matcher`` wants.

        One long poll, then more receives while they come back full and nothing matched (at most
        ``max_receives``). The claimed callback's messages stay hidden for ``handoff_visibility``
        seconds: delete them with :meth:`complete_handoff` once the token is handed on. Messages
        whose step is closed are deleted; every other message is handed back (at once the first
        time, then with a growing delay); malformed and foreign ones are never deleted.
        Step look-ups (``ListPipelineExecutionSteps``) are made only for ``callback_step_name``
        matching and for messages that came back unwanted, at most ``max_lookups`` a call.

        :return: the :class:`Claim`, or ``None`` when nothing matched.
        """
        return self._run(
            self._poll_op(
                queue_url, matcher, wait_time_seconds, handoff_visibility, max_receives, max_lookups
            )
        )

    async def poll_for_callback_async(
        self,
        queue_url: str,
        matcher: CallbackMatcher,
        *,
        wait_time_seconds: int = 20,
        handoff_visibility: int = 900,
        max_receives: int = 10,
        max_lookups: int = 2,
    ) -> Claim | None:
        """Async :meth:`poll_for_callback`."""
        return await self._run_async(
            self._poll_op(
                queue_url, matcher, wait_time_seconds, handoff_visibility, max_receives, max_lookups
            )
        )

    def complete_handoff(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Delete a claim's messages once its token has been handed on (``DeleteMessageBatch``)."""
        return self.delete_messages(queue_url, receipt_handles)

    async def complete_handoff_async(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Async :meth:`complete_handoff`."""
        return await self.delete_messages_async(queue_url, receipt_handles)

    # ------------------------------------------------------------------------------------------
    # Public API: SageMaker
    # ------------------------------------------------------------------------------------------

    def send_step_success(
        self,
        token: str,
        output_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
        declared_types: Mapping[str, OutputType | str] | None = None,
    ) -> str:
        """
        Close a callback step as succeeded (``SendPipelineExecutionStepSuccess``).

        Everything is validated before any request. Idempotent: the same ``client_request_token``
        completes at most once, and when SageMaker answers ``ConflictException`` or
        ``ResourceNotFound`` the step is looked up (``ListPipelineExecutionSteps``, when
        ``execution_arn`` is known); a step already ``Succeeded`` counts as done.

        :param token: the callback token.
        :param output_parameters: ``{name: value}`` or ``[{"Name", "Value"}]``.
        :param client_request_token: idempotency key (32..128 characters); derived from the token
            and the outcome when omitted.
        :param execution_arn: the execution, to check the step's state on a conflict.
        :param declared_types: the step's declared ``{output: OutputType}``; values are converted
            to them and undeclared names are rejected.
        :return: the pipeline execution ARN.
        :raises InvalidOutputParameters: before any request, naming the parameter.
        :raises CallbackStepError: when the step cannot be closed as succeeded.
        """
        request = self._success_request(token, output_parameters, declared_types, client_request_token)
        return self._run(self._close_op(Outcome.SUCCESS, token, request, execution_arn))

    async def send_step_success_async(
        self,
        token: str,
        output_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
        declared_types: Mapping[str, OutputType | str] | None = None,
    ) -> str:
        """Async :meth:`send_step_success`."""
        request = self._success_request(token, output_parameters, declared_types, client_request_token)
        return await self._run_async(self._close_op(Outcome.SUCCESS, token, request, execution_arn))

    def send_step_failure(
        self,
        token: str,
        reason: object,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
    ) -> str:
        """
        Close a callback step as failed (``SendPipelineExecutionStepFailure``).

        The reason is cut to 256 characters (start kept, cut marked). Idempotent like
        :meth:`send_step_success`: a step already ``Failed`` counts as done.

        :return: the pipeline execution ARN.
        :raises CallbackStepError: when the step cannot be closed as failed.
        """
        request = self._failure_request(token, reason, client_request_token)
        return self._run(self._close_op(Outcome.FAILURE, token, request, execution_arn))

    async def send_step_failure_async(
        self,
        token: str,
        reason: object,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
    ) -> str:
        """Async :meth:`send_step_failure`."""
        request = self._failure_request(token, reason, client_request_token)
        return await self._run_async(self._close_op(Outcome.FAILURE, token, request, execution_arn))

    def list_callback_steps(self, execution_arn: str) -> list[CallbackStep]:
        """Every callback step of an execution, newest first (``ListPipelineExecutionSteps``, all pages)."""
        return self._run(self._callback_steps_op(execution_arn))

    async def list_callback_steps_async(self, execution_arn: str) -> list[CallbackStep]:
        """Async :meth:`list_callback_steps`."""
        return await self._run_async(self._callback_steps_op(execution_arn))

    def find_callback_step(
        self, execution_arn: str, step_name: str | None = None, *, token: str | None = None
    ) -> CallbackStep | None:
        """
        Find one callback step of an execution (``ListPipelineExecutionSteps``, paginated).

        :param step_name: the step's ``Name`` in the pipeline definition (for example
            ``ScoreInWarehouse``), not an argument value. Without it, the one open callback step
            (or, when none is open, the newest callback step).
        :param token: find the step that has this callback token.
        :return: the step (status, token, output parameters) or ``None``.
        :raises AmbiguousCallbackStep: without ``step_name`` when several callback steps are open.
        """
        return self._run(self._find_step_op(execution_arn, step_name, token))

    async def find_callback_step_async(
        self, execution_arn: str, step_name: str | None = None, *, token: str | None = None
    ) -> CallbackStep | None:
        """Async :meth:`find_callback_step`."""
        return await self._run_async(self._find_step_op(execution_arn, step_name, token))

    def get_output_types(self, execution_arn: str, step_name: str | None = None) -> dict[str, OutputType]:
        """
        The output parameters a callback step declares (``DescribePipelineDefinitionForExecution``).

        :param step_name: the step's ``Name``; may be omitted when the pipeline has one callback step.
        :return: ``{output name: OutputType}``.
        :raises CallbackStepError: if the step is not a callback step of that execution's definition.
        """
        return pick_output_types(self._run(self._output_types_op(execution_arn)), execution_arn, step_name)

    async def get_output_types_async(
        self, execution_arn: str, step_name: str | None = None
    ) -> dict[str, OutputType]:
        """Async :meth:`get_output_types`."""
        steps = await self._run_async(self._output_types_op(execution_arn))
        return pick_output_types(steps, execution_arn, step_name)

    def resolve_step_arguments(self, execution_arn: str, step_name: str) -> dict[str, Any]:
        """
        Rebuild a step's ``arguments`` as SageMaker resolved them, from the execution's state.

        Reads ``DescribePipelineDefinitionForExecution``, ``ListPipelineParametersForExecution``,
        ``DescribePipelineExecution`` and ``ListPipelineExecutionSteps``. Used when a retried task
        recovers its token without the callback message.

        :raises ExpressionError: when an argument reads something that cannot be known after the fact.
        """
        return self._run(self._resolve_arguments_op(execution_arn, step_name))

    async def resolve_step_arguments_async(self, execution_arn: str, step_name: str) -> dict[str, Any]:
        """Async :meth:`resolve_step_arguments`."""
        return await self._run_async(self._resolve_arguments_op(execution_arn, step_name))

    def describe_execution(self, execution_arn: str) -> dict[str, Any]:
        """``DescribePipelineExecution``."""
        return self._run(
            _single("sagemaker", "describe_pipeline_execution", PipelineExecutionArn=execution_arn)
        )

    async def describe_execution_async(self, execution_arn: str) -> dict[str, Any]:
        """Async :meth:`describe_execution`."""
        return await self._run_async(
            _single("sagemaker", "describe_pipeline_execution", PipelineExecutionArn=execution_arn)
        )

    def stop_execution(self, execution_arn: str, *, client_request_token: str | None = None) -> None:
        """``StopPipelineExecution`` (idempotent with ``client_request_token``)."""
        self._run(_stop_op(execution_arn, client_request_token))

    async def stop_execution_async(
        self, execution_arn: str, *, client_request_token: str | None = None
    ) -> None:
        """Async :meth:`stop_execution`."""
        await self._run_async(_stop_op(execution_arn, client_request_token))


def _single(service: str, method: str, **kwargs: Any) -> _Op[Any]:
    response = yield _Call(service, method, kwargs)
    return response


def _stop_op(execution_arn: str, client_request_token: str | None) -> _Op[None]:
    kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn}
    if client_request_token:
        kwargs["ClientRequestToken"] = check_request_token(client_request_token)
    yield _Call("sagemaker", "stop_pipeline_execution", kwargs)


def check_request_token(crt: str) -> str:
    """Validate a ``ClientRequestToken`` (32..128 characters)."""
    if not isinstance(crt, str) or not 32 <= len(crt) <= 128:
        raise ValueError("client_request_token must be 32 to 128 characters")
    return crt


def select_callback_step(
    steps: Sequence[CallbackStep],
    *,
    execution_arn: str,
    step_name: str | None = None,
    token: str | None = None,
) -> CallbackStep | None:
    """
    Pick one callback step from ``steps`` (newest first), as :meth:`SageMakerCallbackHook.find_callback_step` does.

    :raises AmbiguousCallbackStep: without ``step_name`` or ``token`` when several are open.
    """
    if token is not None:
        return next((s for s in steps if s.token == token), None)
    if step_name is not None:
        return next((s for s in steps if s.name == step_name), None)
    open_steps = [s for s in steps if s.is_open]
    if len(open_steps) > 1:
        names = ", ".join(sorted({s.name for s in open_steps}))
        raise AmbiguousCallbackStep(
            f"execution {execution_arn} has several open callback steps ({names}); "
            "say which one with callback_step_name"
        )
    if open_steps:
        return open_steps[0]
    return steps[0] if steps else None


def pick_output_types(
    steps: Mapping[str, dict[str, OutputType]], execution_arn: str, step_name: str | None
) -> dict[str, OutputType]:
    """The declared outputs of ``step_name`` (or of the only callback step) in a definition."""
    if step_name is None:
        if len(steps) != 1:
            names = ", ".join(sorted(steps)) or "none"
            raise CallbackStepError(
                f"the pipeline of {execution_arn} has {len(steps)} callback steps ({names}); "
                "say which one with its step name"
            )
        return dict(next(iter(steps.values())))
    if step_name not in steps:
        names = ", ".join(sorted(steps)) or "none"
        raise CallbackStepError(
            f"{step_name!r} is not a callback step of the pipeline of {execution_arn} (callback steps: {names})"
        )
    return dict(steps[step_name])


__all__ = [
    "AmbiguousCallbackStep",
    "BatchResult",
    "CallbackStepError",
    "Claim",
    "InvalidOutputParameters",
    "SageMakerCallbackHook",
    "StepDirectory",
    "backoff_visibility",
    "check_token",
]
