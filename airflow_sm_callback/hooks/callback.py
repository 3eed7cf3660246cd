"""
SageMakerCallbackHook: the SQS and SageMaker calls that carry meaning for callback steps.

Every operation is written once, as a generator of AWS requests (:mod:`._operations`,
:mod:`._closing`); :meth:`SageMakerCallbackHook._run` drives it with boto3 and
:meth:`SageMakerCallbackHook._arun` with aiobotocore, so each method and its ``a``-prefixed async
twin (as the amazon provider names them) have the same semantics by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, TypeVar

import botocore.config
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from asgiref.sync import sync_to_async

from airflow_sm_callback import _airflow
from airflow_sm_callback.hooks import _closing
from airflow_sm_callback.hooks import _operations as ops
from airflow_sm_callback.hooks._operations import (
    SQS_BATCH_SIZE,
    BatchResult,
    BoundedSet,
    Call,
    Op,
)
from airflow_sm_callback.protocol import routing
from airflow_sm_callback.protocol.steps import CallbackStep, StepDirectory, pick_output_types
from airflow_sm_callback.protocol.tokens import Outcome

if TYPE_CHECKING:
    from airflow_sm_callback.protocol.matching import CallbackMatcher
    from airflow_sm_callback.protocol.message import ReceivedMessages, UnparsedMessage
    from airflow_sm_callback.protocol.outputs import OutputType

T = TypeVar("T")

#: Retry policy used unless the connection or ``botocore_config`` sets one (``max_attempts`` is
#: botocore's count of retries: 7 requests in all).
DEFAULT_RETRY_MODE: Final = "standard"
DEFAULT_MAX_ATTEMPTS: Final = 6


class SageMakerCallbackHook(AwsBaseHook):
    """
    Receive SageMaker Pipelines callback messages and close callback steps.

    Thin layer over :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`: one
    connection (credentials, region, endpoint, ``botocore_config``) serves both the SQS queue and
    SageMaker. Every method has an ``a``-prefixed async twin (aiobotocore, for triggers) with the
    same semantics. Throttling and 5xx answers are retried by botocore's retry mode (``standard``
    with 6 retries, 7 requests in all, unless the connection's ``config_kwargs`` or ``config``
    sets ``retries``);
    what each error of a close does is listed in :mod:`airflow_sm_callback.hooks._closing`.

    Every callback token the hook handles is registered with Airflow's secrets masker.

    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: Whether to verify SSL certificates (or a CA bundle path).
    :param config: botocore ``Config`` (or its kwargs) for the clients.
    """

    hook_name = "Amazon SageMaker Pipelines callback"
    #: ``MaxResults`` of one ``ListPipelineExecutionSteps`` page.
    list_page_size: int = 100
    #: Delays between the hook's own retries of a close answered ``ResourceLimitExceeded``.
    close_retry_delays: tuple[float, ...] = _closing.RETRY_DELAYS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "sagemaker"
        super().__init__(*args, **kwargs)
        self._async_clients: dict[str, Any] = {}
        self._async_lock: asyncio.Lock | None = None
        self._output_types_cache: dict[str, dict[str, dict[str, OutputType]]] = {}
        #: What this hook knows of the steps behind tokens it has seen.
        self.steps = StepDirectory()
        self._warned = BoundedSet()

    # -- clients ---------------------------------------------------------------------------------

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

    async def _aclient(self, service: str) -> Any:
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

    # -- drivers ---------------------------------------------------------------------------------

    def _run(self, op: Op[T]) -> T:
        clients = {"sqs": lambda: self.sqs_client, "sagemaker": lambda: self.conn}
        return ops.drive(op, lambda service: clients[service](), _airflow.mask_secret, time.sleep)

    async def _arun(self, op: Op[T]) -> T:
        return await ops.adrive(
            op, self._aclient, lambda token: _airflow.amask_secrets([token]), asyncio.sleep
        )

    # -- masking and warnings --------------------------------------------------------------------

    @staticmethod
    def mask(token: str | None) -> None:
        """Register a callback token with Airflow's secrets masker, from sync code (no-op for ``None``)."""
        if token:
            _airflow.mask_secret(token)

    @staticmethod
    async def amask(token: str | None) -> None:
        """Register a callback token with Airflow's secrets masker, from async code."""
        if token:
            await _airflow.amask_secrets([token])

    def warn_invalid(self, message: UnparsedMessage, queue_url: str) -> None:
        """Log a message that is not a usable callback, once per message id, at warning."""
        if self._warned.add(message.message_id or ""):
            self.log.warning(
                "Leaving a message on %s that is not a usable callback for other consumers: %s",
                queue_url,
                message.error,
            )

    def lookup_op(self, execution_arn: str) -> Op[None]:
        """Refresh :attr:`steps` from one listing of the execution (for drivers of shared polls)."""
        return ops.lookup(self.log, self.steps, execution_arn)

    # -- SQS -------------------------------------------------------------------------------------

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
        return self._run(ops.receive(queue_url, max_messages, wait_time_seconds, visibility_timeout))

    async def areceive_callbacks(
        self,
        queue_url: str,
        *,
        max_messages: int = SQS_BATCH_SIZE,
        wait_time_seconds: int = 20,
        visibility_timeout: int | None = None,
    ) -> ReceivedMessages:
        """Async :meth:`receive_callbacks`."""
        return await self._arun(ops.receive(queue_url, max_messages, wait_time_seconds, visibility_timeout))

    def change_visibility(self, queue_url: str, entries: Sequence[tuple[str, int]]) -> BatchResult:
        """
        Set the visibility timeout of received messages (``ChangeMessageVisibilityBatch``).

        :param entries: ``(receipt handle, seconds)``; 0 hands a message back at once, a larger
            value extends the time it stays hidden.
        :return: a :class:`BatchResult`; failed entries are also logged at warning.
        """
        return self._run(ops.change_visibility(self.log, queue_url, entries))

    async def achange_visibility(self, queue_url: str, entries: Sequence[tuple[str, int]]) -> BatchResult:
        """Async :meth:`change_visibility`."""
        return await self._arun(ops.change_visibility(self.log, queue_url, entries))

    def release_messages(self, queue_url: str, receipt_handles: Iterable[str], delay: int = 0) -> BatchResult:
        """Hand messages back to the queue after ``delay`` seconds (``ChangeMessageVisibilityBatch``)."""
        return self.change_visibility(queue_url, [(h, delay) for h in receipt_handles])

    async def arelease_messages(
        self, queue_url: str, receipt_handles: Iterable[str], delay: int = 0
    ) -> BatchResult:
        """Async :meth:`release_messages`."""
        return await self.achange_visibility(queue_url, [(h, delay) for h in receipt_handles])

    def extend_visibility(self, queue_url: str, receipt_handles: Iterable[str], seconds: int) -> BatchResult:
        """Keep messages hidden for ``seconds`` more (``ChangeMessageVisibilityBatch``)."""
        return self.change_visibility(queue_url, [(h, seconds) for h in receipt_handles])

    async def aextend_visibility(
        self, queue_url: str, receipt_handles: Iterable[str], seconds: int
    ) -> BatchResult:
        """Async :meth:`extend_visibility`."""
        return await self.achange_visibility(queue_url, [(h, seconds) for h in receipt_handles])

    def delete_messages(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """
        Delete messages (``DeleteMessageBatch``, 10 a request).

        :return: a :class:`BatchResult`; a partial failure is in ``failed`` and logged at warning.
        """
        return self._run(ops.delete(self.log, queue_url, receipt_handles))

    async def adelete_messages(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Async :meth:`delete_messages`."""
        return await self._arun(ops.delete(self.log, queue_url, receipt_handles))

    def poll_for_callback(
        self,
        queue_url: str,
        matcher: CallbackMatcher,
        *,
        wait_time_seconds: int = 20,
        handoff_visibility: int = 900,
        max_receives: int = 10,
        max_lookups: int = 2,
        handoffs: routing.HandOffKnowledge | None = None,
    ) -> routing.Delivery | None:
        """
        Receive from a shared queue and take the first callback ``matcher`` wants.

        One long poll, then more receives while they come back full and nothing matched (at most
        ``max_receives``). The rest is routed by :mod:`the routing policy
        <airflow_sm_callback.protocol.routing>`: the taken callback's messages stay hidden for
        ``handoff_visibility`` seconds (delete them with :meth:`complete_handoff` once the token
        is handed on); messages whose step is closed are deleted; every other message is handed
        back (at once the first time, then with a growing delay); malformed and foreign ones
        are never deleted. Step look-ups (``ListPipelineExecutionSteps``) are made only for
        ``callback_step_name`` matching and for messages that came back unwanted, at most
        ``max_lookups`` a call.

        :param handoffs: what the caller handed on before (a watcher's tokens), if anything.
        :return: the taken :class:`~airflow_sm_callback.protocol.routing.Delivery` (its
            ``callback`` and every ``receipt_handles`` of its token), or ``None``.
        """
        return self._run(
            self._poll(
                queue_url, matcher, wait_time_seconds, handoff_visibility, max_receives, max_lookups, handoffs
            )
        )

    async def apoll_for_callback(
        self,
        queue_url: str,
        matcher: CallbackMatcher,
        *,
        wait_time_seconds: int = 20,
        handoff_visibility: int = 900,
        max_receives: int = 10,
        max_lookups: int = 2,
        handoffs: routing.HandOffKnowledge | None = None,
    ) -> routing.Delivery | None:
        """Async :meth:`poll_for_callback`."""
        return await self._arun(
            self._poll(
                queue_url, matcher, wait_time_seconds, handoff_visibility, max_receives, max_lookups, handoffs
            )
        )

    def _poll(self, queue_url: str, matcher: CallbackMatcher, *args: Any) -> Op[routing.Delivery | None]:
        wait, hold, receives, lookups, handoffs = args
        return ops.poll(
            self.log, self.steps, handoffs or routing.NoHandOffs(), queue_url, matcher,
            wait_time_seconds=wait, handoff_visibility=hold, max_receives=receives, max_lookups=lookups,
            warn=self.warn_invalid,
        )  # fmt: skip

    def complete_handoff(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Delete a claim's messages once its token has been handed on (``DeleteMessageBatch``)."""
        return self.delete_messages(queue_url, receipt_handles)

    async def acomplete_handoff(self, queue_url: str, receipt_handles: Sequence[str]) -> BatchResult:
        """Async :meth:`complete_handoff`."""
        return await self.adelete_messages(queue_url, receipt_handles)

    # -- SageMaker -------------------------------------------------------------------------------

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
        ``execution_arn`` is known); a step already ``Succeeded`` counts as done. Every other
        answer has one behaviour too (:mod:`airflow_sm_callback.hooks._closing`).

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
        return self._run(
            self._success(token, output_parameters, declared_types, client_request_token, execution_arn)
        )

    async def asend_step_success(
        self,
        token: str,
        output_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
        declared_types: Mapping[str, OutputType | str] | None = None,
    ) -> str:
        """Async :meth:`send_step_success`."""
        return await self._arun(
            self._success(token, output_parameters, declared_types, client_request_token, execution_arn)
        )

    def _success(
        self,
        token: str,
        outputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        declared: Mapping[str, OutputType | str] | None,
        crt: str | None,
        execution_arn: str | None,
    ) -> Op[str]:
        request = ops.success_request(token, outputs, declared, crt)  # validated before any request
        return _closing.close(
            self.log, Outcome.SUCCESS, token, request, execution_arn, retry_delays=self.close_retry_delays
        )

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
        return self._run(self._failure(token, reason, client_request_token, execution_arn))

    async def asend_step_failure(
        self,
        token: str,
        reason: object,
        *,
        client_request_token: str | None = None,
        execution_arn: str | None = None,
    ) -> str:
        """Async :meth:`send_step_failure`."""
        return await self._arun(self._failure(token, reason, client_request_token, execution_arn))

    def _failure(self, token: str, reason: object, crt: str | None, execution_arn: str | None) -> Op[str]:
        request = ops.failure_request(token, reason, crt)
        return _closing.close(
            self.log, Outcome.FAILURE, token, request, execution_arn, retry_delays=self.close_retry_delays
        )

    def list_callback_steps(self, execution_arn: str) -> list[CallbackStep]:
        """Every callback step of an execution, newest first (``ListPipelineExecutionSteps``, all pages)."""
        return self._run(ops.callback_steps(execution_arn, self.list_page_size))

    async def alist_callback_steps(self, execution_arn: str) -> list[CallbackStep]:
        """Async :meth:`list_callback_steps`."""
        return await self._arun(ops.callback_steps(execution_arn, self.list_page_size))

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
        return self._run(ops.find_step(execution_arn, step_name, token))

    async def afind_callback_step(
        self, execution_arn: str, step_name: str | None = None, *, token: str | None = None
    ) -> CallbackStep | None:
        """Async :meth:`find_callback_step`."""
        return await self._arun(ops.find_step(execution_arn, step_name, token))

    def get_output_types(self, execution_arn: str, step_name: str | None = None) -> dict[str, OutputType]:
        """
        The output parameters a callback step declares (``DescribePipelineDefinitionForExecution``).

        :param step_name: the step's ``Name``; may be omitted when the pipeline has one callback step.
        :return: ``{output name: OutputType}``.
        :raises CallbackStepError: if the step is not a callback step of that execution's definition.
        """
        steps = self._run(ops.output_types(self._output_types_cache, execution_arn))
        return pick_output_types(steps, execution_arn, step_name)

    async def aget_output_types(
        self, execution_arn: str, step_name: str | None = None
    ) -> dict[str, OutputType]:
        """Async :meth:`get_output_types`."""
        steps = await self._arun(ops.output_types(self._output_types_cache, execution_arn))
        return pick_output_types(steps, execution_arn, step_name)

    def resolve_step_arguments(self, execution_arn: str, step_name: str) -> dict[str, Any]:
        """
        Rebuild a step's ``arguments`` as SageMaker resolved them, from the execution's state.

        Reads ``DescribePipelineDefinitionForExecution``, ``ListPipelineParametersForExecution``,
        ``DescribePipelineExecution`` and ``ListPipelineExecutionSteps``. Used when a retried task
        recovers its token without the callback message.

        :raises ExpressionError: when an argument reads something that cannot be known after the fact.
        """
        return self._run(ops.resolve_arguments(execution_arn, step_name))

    async def aresolve_step_arguments(self, execution_arn: str, step_name: str) -> dict[str, Any]:
        """Async :meth:`resolve_step_arguments`."""
        return await self._arun(ops.resolve_arguments(execution_arn, step_name))

    def describe_execution(self, execution_arn: str) -> dict[str, Any]:
        """``DescribePipelineExecution``."""
        return self._run(
            ops.single("sagemaker", "describe_pipeline_execution", PipelineExecutionArn=execution_arn)
        )

    async def adescribe_execution(self, execution_arn: str) -> dict[str, Any]:
        """Async :meth:`describe_execution`."""
        return await self._arun(
            ops.single("sagemaker", "describe_pipeline_execution", PipelineExecutionArn=execution_arn)
        )

    def stop_execution(self, execution_arn: str, *, client_request_token: str | None = None) -> None:
        """``StopPipelineExecution`` (idempotent with ``client_request_token``)."""
        self._run(ops.stop(execution_arn, client_request_token))

    async def astop_execution(self, execution_arn: str, *, client_request_token: str | None = None) -> None:
        """Async :meth:`stop_execution`."""
        await self._arun(ops.stop(execution_arn, client_request_token))


__all__ = ["BatchResult", "Call", "SageMakerCallbackHook"]
