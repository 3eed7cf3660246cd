"""
The step engine: the SageMaker Pipelines execution actions, answered from in-memory executions.

Pure Python: no moto, no boto3, no Airflow. The server layer (:mod:`._sagemaker`) feeds it
parsed requests and gives it a function that puts a message on an SQS queue; the engine keeps
every pipeline execution, runs its steps (:mod:`._runner`) and answers with plain dictionaries
shaped like the SageMaker API's responses. Errors are :class:`~._settings.EngineError` carrying
the service's error code. The pieces: settings and the error (:mod:`._settings`), definitions
and conditions (:mod:`._definition`), field checks, idempotency and pages (:mod:`._validation`),
the execution records (:mod:`._execution`).

One re-entrant lock guards all state; every public method takes it, so the engine is safe to
call from the server's request threads and from its own timer threads
(``step_delay_seconds``).
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Mapping
from typing import Any, Final

from ._definition import check_declared_outputs, load_definition, parse_parameters, parse_steps
from ._execution import FINISHED_EXECUTION_STATUSES, OPEN_STEP_STATUSES, Execution, StepRun, now
from ._runner import QueueSender, StepRunner
from ._settings import DEFAULT_SETTINGS, EngineError, EngineSettings
from ._validation import (
    IdempotencyCache,
    check_client_request_token,
    check_failure_reason,
    check_max_results,
    check_outputs,
    check_sort_order,
    check_token,
    fingerprint,
    paginate,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "EngineError",
    "EngineSettings",
    "QueueSender",
    "StepEngine",
]

_EXECUTION_ID_ALPHABET: Final = string.ascii_lowercase + string.digits


class StepEngine:
    """
    Runs pipeline executions and answers the callback-side SageMaker actions.

    :param send_message: puts a message body on a queue (see :data:`~._runner.QueueSender`).
    :param settings: initial settings; :data:`~._settings.DEFAULT_SETTINGS` when omitted.
    """

    def __init__(self, send_message: QueueSender, settings: EngineSettings | None = None) -> None:
        self._settings = settings or DEFAULT_SETTINGS
        self._lock = threading.RLock()
        self._executions: dict[str, Execution] = {}
        self._idempotency = IdempotencyCache()
        #: token -> close requests the service accepted, replays of the same request excluded.
        self._accepted_closes: dict[str, int] = {}
        self._runner = StepRunner(send_message, self._lock, self._executions, lambda: self._settings)

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> EngineSettings:
        """The current settings."""
        with self._lock:
            return self._settings

    def configure(self, changes: Mapping[str, Any]) -> EngineSettings:
        """
        Change settings; unknown names and wrong types are rejected before anything changes.

        :param changes: setting name to new value.
        :return: the settings now in force.
        :raises EngineError: ``ValidationException`` for a bad name or value.
        """
        with self._lock:
            self._settings = self._settings.updated(changes)
            return self._settings

    def reset_settings(self) -> EngineSettings:
        """Go back to :data:`~._settings.DEFAULT_SETTINGS`. :return: the settings now in force."""
        with self._lock:
            self._settings = DEFAULT_SETTINGS
            return self._settings

    def shutdown(self) -> None:
        """Cancel every pending step timer; the engine keeps answering reads."""
        with self._lock:
            self._runner.shutdown()

    # ------------------------------------------------------------------ start

    def start_execution(
        self,
        *,
        account_id: str,
        region: str,
        pipeline_name: str,
        pipeline_arn: str,
        definition: str | Mapping[str, Any],
        display_name: str | None,
        description: str | None,
        parameters: list[dict[str, Any]] | None,
        client_request_token: str | None,
    ) -> dict[str, Any]:
        """
        Start an execution of a pipeline definition and run it as far as it goes.

        The same ``client_request_token`` with the same request returns the first response and
        starts nothing; with a different request it is a ``ValidationException``.

        :param account_id: account of the pipeline.
        :param region: region of the pipeline.
        :param pipeline_name: the pipeline's name.
        :param pipeline_arn: the pipeline's ARN.
        :param definition: the pipeline definition (JSON text or parsed).
        :param display_name: ``PipelineExecutionDisplayName``; a timestamped name when omitted.
        :param description: ``PipelineExecutionDescription``.
        :param parameters: ``PipelineParameters`` as ``[{"Name", "Value"}]``.
        :param client_request_token: the idempotency key.
        :return: ``{"PipelineExecutionArn": ...}``.
        :raises EngineError: ``ValidationException`` for a bad definition or parameter.
        """
        operation = "StartPipelineExecution"
        request = fingerprint(pipeline_arn, display_name, description, parameters)
        with self._lock:
            replay = self._idempotency.replay(account_id, operation, client_request_token, request)
            if replay is not None:
                return replay
            parsed, definition_text = load_definition(definition)
            step_defs = parse_steps(parsed)
            typed, listed = parse_parameters(
                parsed, parameters or [], strict=self._settings.strict_start_parameters
            )
            execution_id = self._new_execution_id()
            arn = f"{pipeline_arn}/execution/{execution_id}"
            started = now()
            execution = Execution(
                arn=arn,
                execution_id=execution_id,
                pipeline_name=pipeline_name,
                pipeline_arn=pipeline_arn,
                account_id=account_id,
                region=region,
                display_name=display_name or f"execution-{int(started.timestamp() * 1000)}",
                description=description,
                definition=parsed,
                definition_text=definition_text,
                parameters=typed,
                parameter_list=listed,
                step_defs=step_defs,
                creation_time=started,
                last_modified_time=started,
            )
            self._executions[arn] = execution
            self._runner.advance(execution)
            response = {"PipelineExecutionArn": arn}
            self._idempotency.remember(account_id, operation, client_request_token, request, response)
            return dict(response)

    def _new_execution_id(self) -> str:
        while True:
            candidate = "".join(secrets.choice(_EXECUTION_ID_ALPHABET) for _ in range(12))
            if not any(e.execution_id == candidate for e in self._executions.values()):
                return candidate

    # ------------------------------------------------------------------ reads

    def _get(self, arn: str | None) -> Execution:
        execution = self._executions.get(arn or "")
        if execution is None:
            raise EngineError("ResourceNotFound", f"Pipeline execution {arn} does not exist.")
        return execution

    def describe_execution(self, arn: str | None) -> dict[str, Any]:
        """
        :param arn: ``PipelineExecutionArn``.
        :return: the ``DescribePipelineExecution`` response.
        :raises EngineError: ``ResourceNotFound`` for an unknown ARN.
        """
        with self._lock:
            return self._get(arn).describe()

    def definition_for_execution(self, arn: str | None) -> dict[str, Any]:
        """
        :param arn: ``PipelineExecutionArn``.
        :return: the ``DescribePipelineDefinitionForExecution`` response.
        :raises EngineError: ``ResourceNotFound`` for an unknown ARN.
        """
        with self._lock:
            execution = self._get(arn)
            return {
                "PipelineDefinition": execution.definition_text,
                "CreationTime": execution.creation_time,
            }

    def parameters_for_execution(self, arn: str | None) -> dict[str, Any]:
        """
        :param arn: ``PipelineExecutionArn``.
        :return: the ``ListPipelineParametersForExecution`` response (one page).
        :raises EngineError: ``ResourceNotFound`` for an unknown ARN.
        """
        with self._lock:
            execution = self._get(arn)
            return {"PipelineParameters": [dict(p) for p in execution.parameter_list]}

    def list_steps(
        self,
        arn: str | None,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
        sort_order: str | None = None,
    ) -> dict[str, Any]:
        """
        ``ListPipelineExecutionSteps``: the started steps, by start time.

        :param arn: ``PipelineExecutionArn``.
        :param max_results: page size, 1..100 (default 100).
        :param next_token: the token of the previous page.
        :param sort_order: ``Ascending`` or ``Descending`` (default).
        :return: ``{"PipelineExecutionSteps": [...], "NextToken"?}``.
        :raises EngineError: ``ValidationException`` for bad paging arguments,
            ``ResourceNotFound`` for an unknown ARN.
        """
        limit = check_max_results(max_results)
        order = check_sort_order(sort_order)
        with self._lock:
            execution = self._get(arn)
            runs = sorted(execution.runs.values(), key=lambda r: (r.start_time, r.seq))
            if order == "Descending":
                runs.reverse()
            page, token = paginate(runs, limit, next_token, execution.arn)
            response: dict[str, Any] = {"PipelineExecutionSteps": [r.to_api() for r in page]}
            if token is not None:
                response["NextToken"] = token
            return response

    def list_executions(
        self,
        pipeline_arn: str,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
        sort_order: str | None = None,
        sort_by: str | None = None,
    ) -> dict[str, Any]:
        """
        ``ListPipelineExecutions`` of one pipeline.

        :param pipeline_arn: the pipeline's ARN.
        :param max_results: page size, 1..100 (default 100).
        :param next_token: the token of the previous page.
        :param sort_order: ``Ascending`` or ``Descending`` (default).
        :param sort_by: ``CreationTime`` (default) or ``PipelineExecutionArn``.
        :return: ``{"PipelineExecutionSummaries": [...], "NextToken"?}``.
        :raises EngineError: ``ValidationException`` for bad arguments.
        """
        limit = check_max_results(max_results)
        order = check_sort_order(sort_order)
        by = sort_by or "CreationTime"
        if by not in ("CreationTime", "PipelineExecutionArn"):
            raise EngineError(
                "ValidationException",
                f"SortBy must be CreationTime or PipelineExecutionArn, not {by!r}",
            )
        with self._lock:
            executions = [e for e in self._executions.values() if e.pipeline_arn == pipeline_arn]
            if by == "CreationTime":
                executions.sort(key=lambda e: e.creation_time)
            else:
                executions.sort(key=lambda e: e.arn)
            if order == "Descending":
                executions.reverse()
            page, token = paginate(executions, limit, next_token, pipeline_arn)
            response: dict[str, Any] = {"PipelineExecutionSummaries": [e.summary() for e in page]}
            if token is not None:
                response["NextToken"] = token
            return response

    # ------------------------------------------------------------------ close

    def send_step_success(
        self,
        *,
        account_id: str,
        callback_token: Any,
        output_parameters: Any,
        client_request_token: Any,
    ) -> dict[str, Any]:
        """
        ``SendPipelineExecutionStepSuccess``.

        Checks, in order: the fields (``ValidationException`` naming the field: token exactly 10
        characters of ``[a-zA-Z0-9]``, at most 50 outputs, ``Name`` up to 256 and ``Value`` up to
        1024 characters, ``ClientRequestToken`` 32..128 characters); idempotency (the same
        ``ClientRequestToken`` with the same request returns the first response and changes
        nothing, even after the step closed; the same ``ClientRequestToken`` with different
        parameters is a ``ValidationException``); the token (``ResourceNotFound`` when unknown);
        the outputs against the step's declarations (``strict_output_names``,
        ``strict_output_types``); the state (``conflict_on_stopped_or_failed``,
        ``conflict_on_reclose``). Then stores the outputs as received, marks the step
        ``Succeeded`` and moves the execution on.

        :param account_id: the caller's account.
        :param callback_token: ``CallbackToken``.
        :param output_parameters: ``OutputParameters``: ``[{"Name", "Value"}]``.
        :param client_request_token: ``ClientRequestToken``.
        :return: ``{"PipelineExecutionArn": ...}``.
        :raises EngineError: as described above.
        """
        operation = "SendPipelineExecutionStepSuccess"
        token = check_token(callback_token)
        outputs = check_outputs(output_parameters)
        crt = check_client_request_token(client_request_token)
        request = fingerprint(token, outputs)
        with self._lock:
            replay = self._idempotency.replay(account_id, operation, crt, request)
            if replay is not None:
                return replay
            execution, run = self._lookup_token(account_id, token)
            settings = self._settings
            outputs = check_declared_outputs(
                execution.step_defs[run.name],
                outputs,
                strict_names=settings.strict_output_names,
                strict_types=settings.strict_output_types,
            )
            response = {"PipelineExecutionArn": execution.arn}
            if self._closable(execution, run):
                run.outputs = outputs
                run.close("Succeeded")
                execution.touch()
                self._runner.advance(execution)
            self._accepted_closes[token] = self._accepted_closes.get(token, 0) + 1
            self._idempotency.remember(account_id, operation, crt, request, response)
            return dict(response)

    def send_step_failure(
        self,
        *,
        account_id: str,
        callback_token: Any,
        failure_reason: Any,
        client_request_token: Any,
    ) -> dict[str, Any]:
        """
        ``SendPipelineExecutionStepFailure``.

        Same checks as :meth:`send_step_success` (``FailureReason`` up to 256 characters; the
        same ``ClientRequestToken`` with different parameters is a ``ValidationException``).
        The step becomes ``Failed`` with that reason; the execution fails (its
        ``FailureReason`` names the step) once no other step is running, or becomes
        ``Stopped`` when a stop was requested.

        :param account_id: the caller's account.
        :param callback_token: ``CallbackToken``.
        :param failure_reason: ``FailureReason``.
        :param client_request_token: ``ClientRequestToken``.
        :return: ``{"PipelineExecutionArn": ...}``.
        :raises EngineError: as for :meth:`send_step_success`.
        """
        operation = "SendPipelineExecutionStepFailure"
        token = check_token(callback_token)
        reason = check_failure_reason(failure_reason)
        crt = check_client_request_token(client_request_token)
        request = fingerprint(token, reason)
        with self._lock:
            replay = self._idempotency.replay(account_id, operation, crt, request)
            if replay is not None:
                return replay
            execution, run = self._lookup_token(account_id, token)
            response = {"PipelineExecutionArn": execution.arn}
            if self._closable(execution, run):
                run.close("Failed", reason)
                execution.fail(f"Step {run.name} failed: {reason}")
                execution.touch()
                self._runner.advance(execution)
            self._accepted_closes[token] = self._accepted_closes.get(token, 0) + 1
            self._idempotency.remember(account_id, operation, crt, request, response)
            return dict(response)

    def accepted_closes(self) -> dict[str, int]:
        """
        How many close requests the service accepted per token (``Send*Step*`` answered with
        success, not counting a replay of the same request). More than one means a step was
        closed twice: only possible with ``conflict_on_reclose`` off.
        """
        with self._lock:
            return dict(self._accepted_closes)

    def _lookup_token(self, account_id: str, token: str) -> tuple[Execution, StepRun]:
        found = self._runner.tokens.get(token)
        if found is not None:
            execution = self._executions.get(found[0])
            if execution is not None and execution.account_id == account_id:
                return execution, execution.runs[found[1]]
        raise EngineError("ResourceNotFound", "No callback step with the given CallbackToken exists.")

    def _closable(self, execution: Execution, run: StepRun) -> bool:
        """Apply the state rules; ``True`` when the close should change the step."""
        settings = self._settings
        if execution.status in ("Stopped", "Failed") and settings.conflict_on_stopped_or_failed:
            raise EngineError(
                "ConflictException",
                f"Pipeline execution {execution.arn} is {execution.status}; "
                f"step {run.name} cannot be closed.",
            )
        if run.status not in OPEN_STEP_STATUSES:
            if settings.conflict_on_reclose:
                raise EngineError(
                    "ConflictException",
                    f"Step {run.name} is already closed (status {run.status}).",
                )
            return False
        return True

    # ------------------------------------------------------------------ stop

    def stop_execution(
        self, *, account_id: str, arn: str | None, client_request_token: str | None
    ) -> dict[str, Any]:
        """
        ``StopPipelineExecution``.

        The execution becomes ``Stopping``; each executing callback step becomes ``Stopping`` and
        a second message with the same token and ``"status": "Stopping"`` goes to its queue;
        other running steps become ``Stopped``; steps not started never start. The execution is
        ``Stopped`` once every callback step is closed (at once when none is running). Stopping
        a ``Stopping`` execution again changes nothing; stopping a finished one is a
        ``ConflictException``.

        :param account_id: the caller's account.
        :param arn: ``PipelineExecutionArn``.
        :param client_request_token: the idempotency key.
        :return: ``{"PipelineExecutionArn": ...}``.
        :raises EngineError: ``ResourceNotFound``, ``ConflictException``.
        """
        operation = "StopPipelineExecution"
        request = fingerprint(arn)
        with self._lock:
            replay = self._idempotency.replay(account_id, operation, client_request_token, request)
            if replay is not None:
                return replay
            execution = self._get(arn)
            if execution.status in FINISHED_EXECUTION_STATUSES:
                raise EngineError(
                    "ConflictException",
                    f"Pipeline execution {execution.arn} is already {execution.status}.",
                )
            response = {"PipelineExecutionArn": execution.arn}
            if not execution.stop_requested:
                self._runner.stop(execution)
            self._idempotency.remember(account_id, operation, client_request_token, request, response)
            return dict(response)
