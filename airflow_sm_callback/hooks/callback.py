"""
SageMakerCallbackHook: the SQS and SageMaker calls that carry meaning for callback steps.

Every operation is written once, as a generator of AWS requests (:class:`_Call`) that receives
each response back; :meth:`SageMakerCallbackHook._run` drives it with boto3 and
:meth:`SageMakerCallbackHook._run_async` with aiobotocore, so the sync and async methods have the
same semantics by construction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, TypeVar

import botocore.config
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from asgiref.sync import sync_to_async
from botocore.exceptions import ClientError

from airflow_sm_callback.callback import (
    TOKEN_RE,
    CallbackStep,
    InvalidOutputParameters,
    Outcome,
    OutputType,
    ReceivedMessages,
    callback_steps_in_definition,
    client_request_token,
    encode_output_parameters,
    mask_token,
    truncate_failure_reason,
)

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


class CallbackStepError(RuntimeError):
    """A callback step could not be closed (or looked up) the way it was asked."""


class AmbiguousCallbackStep(CallbackStepError):
    """Several callback steps of one execution are open; say which one with its step name."""


@dataclass(frozen=True, slots=True)
class _Call:
    """One AWS request an operation wants made."""

    service: str
    method: str
    kwargs: dict[str, Any]


_Op = Generator[_Call, Any, T]


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker"
        super().__init__(*args, **kwargs)
        self._async_clients: dict[str, Any] = {}
        self._async_lock: asyncio.Lock | None = None
        self._output_types_cache: dict[str, dict[str, dict[str, OutputType]]] = {}

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
        """Register a callback token with Airflow's secrets masker (no-op for ``None``)."""
        if token:
            register_token(token)

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
        received = ReceivedMessages.parse(response.get("Messages") or [])
        for callback in received.callbacks:
            self.mask(callback.token)
        return received

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
        kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "MaxResults": 100}
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
            self.mask(step.token)
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
        method = (
            "send_pipeline_execution_step_success"
            if outcome is Outcome.SUCCESS
            else "send_pipeline_execution_step_failure"
        )
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
                    f"closing callback step (token {mask_token(token)}) as {outcome.value} failed with {code}, "
                    "and the execution is not known, so whether it was already closed cannot be checked"
                ) from err
            step = yield from self._find_step_op(execution_arn, None, token)
            wanted = "Succeeded" if outcome is Outcome.SUCCESS else "Failed"
            if step is not None and step.status == wanted:
                self.log.info(
                    "Callback step %s of %s was already closed as %s; nothing to do",
                    step.name,
                    execution_arn,
                    outcome.value,
                )
                return execution_arn
            state = f"its step {step.name!r} is {step.status}" if step else "no step has that token"
            raise CallbackStepError(
                f"cannot close callback step (token {mask_token(token)}) of {execution_arn} as "
                f"{outcome.value}: SageMaker answered {code} and {state}"
            ) from err
        return response.get("PipelineExecutionArn") or execution_arn or ""

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
        self.mask(token)
        return {"CallbackToken": token, "OutputParameters": params, "ClientRequestToken": crt}

    def _failure_request(self, token: str, reason: object, crt: str | None) -> dict[str, Any]:
        check_token(token)
        crt = check_request_token(crt or client_request_token(callback_token=token, outcome=Outcome.FAILURE))
        self.mask(token)
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


def register_token(token: str) -> None:
    """Register a callback token with Airflow's secrets masker, wherever this runs."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - Task SDK always present on Airflow 3
        return
    mask_secret(token)


def check_token(token: object) -> str:
    """
    Validate a callback token before any request.

    :raises InvalidOutputParameters: never; raises :class:`ValueError` naming the defect (the
        token itself is never printed).
    """
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        shape = f"{len(token)} characters" if isinstance(token, str) else f"a {type(token).__name__}"
        raise ValueError(
            f"callback token is malformed: expected exactly 10 characters [a-zA-Z0-9], got {shape}"
        )
    return token


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
    "InvalidOutputParameters",
    "SageMakerCallbackHook",
    "backoff_visibility",
    "check_token",
]
