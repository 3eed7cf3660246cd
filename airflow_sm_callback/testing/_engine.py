"""
The step engine behind the emulator's SageMaker Pipelines callback side.

Pure Python: no moto, no boto3, no Airflow. The server layer (:mod:`._server`) feeds it parsed
requests and gives it a function that puts a message on an SQS queue; the engine keeps every
pipeline execution, runs its steps and answers with plain dictionaries shaped like the
SageMaker API's responses. Errors are :class:`EngineError` carrying the service's error code.

One re-entrant lock guards all state; every public method takes it, so the engine is safe to
call from the server's request threads and from its own timer threads
(``step_delay_seconds``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import secrets
import string
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from airflow_sm_callback.protocol.expressions import (
    OUTPUT_REF_RE,
    STEP_REF_RE,
    ExpressionError,
    cast_value,
    referenced_steps,
    resolve,
    to_text,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "EngineError",
    "EngineSettings",
    "QueueSender",
    "StepEngine",
    "cast_value",
]

#: Statuses of an execution that will never change again.
FINISHED_EXECUTION_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
#: Statuses of a step that is still open (running).
OPEN_STEP_STATUSES: Final = frozenset({"Starting", "Executing", "Stopping"})

_TOKEN_ALPHABET: Final = string.ascii_letters + string.digits
_TOKEN_RE: Final = re.compile(r"^[a-zA-Z0-9]{10}$")
_EXECUTION_ID_ALPHABET: Final = string.ascii_lowercase + string.digits

MAX_OUTPUT_PARAMETERS: Final = 50
MAX_OUTPUT_NAME: Final = 256
MAX_OUTPUT_VALUE: Final = 1024
MAX_FAILURE_REASON: Final = 256
MIN_CLIENT_REQUEST_TOKEN: Final = 32
MAX_CLIENT_REQUEST_TOKEN: Final = 128
VALID_TYPES: Final = ("String", "Integer", "Float", "Boolean")

#: Sends one message body to an SQS queue URL; the second argument is the region to assume
#: when the URL does not name one. Raises any exception to report that the send failed.
QueueSender = Callable[[str, str, str], None]


class EngineError(Exception):
    """
    An error the service answers with.

    :param code: the modelled error code (``ValidationException``, ``ResourceNotFound``,
        ``ConflictException``, ``ResourceLimitExceeded``).
    :param message: the human readable message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: An expression in a definition could not be resolved or evaluated.
_ResolutionError = ExpressionError


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """
    Behaviour the SageMaker documentation leaves open. Every default is the strict choice.

    :param strict_output_names: reject (``ValidationException``) an output name the step does
        not declare; lenient: accept the close and drop that output.
    :param strict_output_types: reject (``ValidationException``) a value that does not cast to
        the output's declared type; lenient: store it, and fail the execution when a later step
        reads it.
    :param conflict_on_reclose: closing an already closed step with a new
        ``ClientRequestToken`` answers ``ConflictException``; lenient: a success response that
        changes nothing.
    :param conflict_on_stopped_or_failed: closing any step of a ``Stopped`` or ``Failed``
        execution answers ``ConflictException`` (checked before ``conflict_on_reclose``);
        lenient: fall through to the re-close rule.
    :param strict_start_parameters: ``StartPipelineExecution`` rejects a parameter the
        definition does not declare, a value that does not cast to the parameter's type and a
        missing parameter without default; lenient: unknown names are ignored, uncastable values
        are kept as strings, missing ones resolve to an empty string.
    :param step_delay_seconds: time every non-callback step takes before it succeeds; ``0``
        finishes them synchronously inside the request that started them.
    """

    strict_output_names: bool = True
    strict_output_types: bool = True
    conflict_on_reclose: bool = True
    conflict_on_stopped_or_failed: bool = True
    strict_start_parameters: bool = True
    step_delay_seconds: float = 0.0

    def updated(self, changes: Mapping[str, Any]) -> EngineSettings:
        """
        Return a copy with ``changes`` applied, after checking names and types.

        :param changes: setting name to new value.
        :raises EngineError: ``ValidationException`` for an unknown name or a wrong type.
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise EngineError(
                    "ValidationException",
                    f"Unknown setting {name!r}; known settings: {', '.join(sorted(known))}",
                )
            if name == "step_delay_seconds":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise EngineError("ValidationException", "step_delay_seconds must be a number")
                if not math.isfinite(value) or value < 0:
                    raise EngineError("ValidationException", "step_delay_seconds must be >= 0")
                clean[name] = float(value)
            else:
                if not isinstance(value, bool):
                    raise EngineError("ValidationException", f"Setting {name} must be a boolean")
                clean[name] = value
        return dataclasses.replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        """:return: the settings as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


DEFAULT_SETTINGS: Final = EngineSettings()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class _StepDef:
    name: str
    type: str
    body: dict[str, Any]
    depends_on: frozenset[str]
    parent: tuple[str, bool] | None
    order: int


@dataclasses.dataclass
class _StepRun:
    name: str
    type: str
    seq: int
    status: str
    start_time: datetime
    end_time: datetime | None = None
    failure_reason: str | None = None
    token: str | None = None
    queue_url: str | None = None
    arguments: dict[str, Any] | None = None
    outputs: list[dict[str, str]] = dataclasses.field(default_factory=list)
    outcome: bool | None = None
    error_message: str | None = None
    timer: threading.Timer | None = None

    def close(self, status: str, failure_reason: str | None = None) -> None:
        self.status = status
        self.end_time = _now()
        if failure_reason is not None:
            self.failure_reason = failure_reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def to_api(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "StepName": self.name,
            "StepDisplayName": self.name,
            "StepStatus": self.status,
            "StartTime": self.start_time,
            "AttemptCount": 1,
        }
        if self.end_time is not None:
            item["EndTime"] = self.end_time
        if self.failure_reason is not None:
            item["FailureReason"] = self.failure_reason
        metadata: dict[str, Any] = {}
        if self.type == "Callback":
            callback: dict[str, Any] = {"OutputParameters": [dict(o) for o in self.outputs]}
            if self.token is not None:
                callback["CallbackToken"] = self.token
            if self.queue_url is not None:
                callback["SqsQueueUrl"] = self.queue_url
            metadata["Callback"] = callback
        elif self.type == "Condition" and self.outcome is not None:
            metadata["Condition"] = {"Outcome": "True" if self.outcome else "False"}
        elif self.type == "Fail":
            metadata["Fail"] = {"ErrorMessage": self.error_message or ""}
        item["Metadata"] = metadata
        return item


@dataclasses.dataclass
class _Execution:
    arn: str
    execution_id: str
    pipeline_name: str
    pipeline_arn: str
    account_id: str
    region: str
    display_name: str
    description: str | None
    definition: dict[str, Any]
    definition_text: str
    parameters: dict[str, Any]
    parameter_list: list[dict[str, str]]
    step_defs: dict[str, _StepDef]
    status: str = "Executing"
    failure_reason: str | None = None
    creation_time: datetime = dataclasses.field(default_factory=_now)
    last_modified_time: datetime = dataclasses.field(default_factory=_now)
    runs: dict[str, _StepRun] = dataclasses.field(default_factory=dict)
    failed: bool = False
    stop_requested: bool = False

    def touch(self) -> None:
        self.last_modified_time = _now()


@dataclasses.dataclass(frozen=True)
class _IdempotentCall:
    operation: str
    fingerprint: str
    response: dict[str, Any]


class StepEngine:
    """
    Runs pipeline executions and answers the callback-side SageMaker actions.

    :param send_message: puts a message body on a queue (see :data:`QueueSender`).
    :param settings: initial settings; :data:`DEFAULT_SETTINGS` when omitted.
    """

    def __init__(self, send_message: QueueSender, settings: EngineSettings | None = None) -> None:
        self._send = send_message
        self._settings = settings or DEFAULT_SETTINGS
        self._lock = threading.RLock()
        self._executions: dict[str, _Execution] = {}
        self._tokens: dict[str, tuple[str, str]] = {}
        self._idempotency: dict[tuple[str, str], _IdempotentCall] = {}
        #: token -> close requests the service accepted, replays of the same request excluded.
        self._accepted_closes: dict[str, int] = {}
        self._seq = 0
        self._closed = False

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
        """Go back to :data:`DEFAULT_SETTINGS`. :return: the settings now in force."""
        with self._lock:
            self._settings = DEFAULT_SETTINGS
            return self._settings

    def shutdown(self) -> None:
        """Cancel every pending step timer; the engine keeps answering reads."""
        with self._lock:
            self._closed = True
            for execution in self._executions.values():
                for run in execution.runs.values():
                    if run.timer is not None:
                        run.timer.cancel()
                        run.timer = None

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
        fingerprint = _fingerprint(pipeline_arn, display_name, description, parameters)
        with self._lock:
            replay = self._replay(account_id, "StartPipelineExecution", client_request_token, fingerprint)
            if replay is not None:
                return replay
            if isinstance(definition, str):
                try:
                    parsed = json.loads(definition)
                except ValueError as exc:
                    raise EngineError(
                        "ValidationException", f"PipelineDefinition is not valid JSON: {exc}"
                    ) from None
                definition_text = definition
            else:
                parsed = dict(definition)
                definition_text = json.dumps(parsed)
            if not isinstance(parsed, dict):
                raise EngineError("ValidationException", "PipelineDefinition must be a JSON object")
            step_defs = _parse_steps(parsed)
            typed, listed = self._parse_parameters(parsed, parameters or [])
            execution_id = self._new_execution_id()
            arn = f"{pipeline_arn}/execution/{execution_id}"
            now = _now()
            execution = _Execution(
                arn=arn,
                execution_id=execution_id,
                pipeline_name=pipeline_name,
                pipeline_arn=pipeline_arn,
                account_id=account_id,
                region=region,
                display_name=display_name or f"execution-{int(now.timestamp() * 1000)}",
                description=description,
                definition=parsed,
                definition_text=definition_text,
                parameters=typed,
                parameter_list=listed,
                step_defs=step_defs,
                creation_time=now,
                last_modified_time=now,
            )
            self._executions[arn] = execution
            self._advance(execution)
            response = {"PipelineExecutionArn": arn}
            self._remember(account_id, "StartPipelineExecution", client_request_token, fingerprint, response)
            return dict(response)

    def _new_execution_id(self) -> str:
        while True:
            candidate = "".join(secrets.choice(_EXECUTION_ID_ALPHABET) for _ in range(12))
            if not any(e.execution_id == candidate for e in self._executions.values()):
                return candidate

    def _parse_parameters(
        self, definition: dict[str, Any], given: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        strict = self._settings.strict_start_parameters
        declared: dict[str, dict[str, Any]] = {}
        for item in definition.get("Parameters") or []:
            if isinstance(item, dict) and isinstance(item.get("Name"), str):
                declared[item["Name"]] = item
        values: dict[str, Any] = {}
        for entry in given:
            if not isinstance(entry, dict) or not isinstance(entry.get("Name"), str):
                raise EngineError("ValidationException", "PipelineParameters entries need a Name")
            name = entry["Name"]
            value = entry.get("Value", "")
            if name not in declared:
                if strict:
                    raise EngineError(
                        "ValidationException",
                        f"PipelineParameters: parameter {name!r} is not defined in the pipeline",
                    )
                continue
            values[name] = value
        typed: dict[str, Any] = {}
        listed: list[dict[str, str]] = []
        for name, spec in declared.items():
            type_name = spec.get("Type", "String")
            if name in values:
                raw: Any = values[name]
            elif "DefaultValue" in spec:
                raw = spec["DefaultValue"]
            else:
                if strict:
                    raise EngineError(
                        "ValidationException",
                        f"PipelineParameters: parameter {name!r} has no default and was not given",
                    )
                raw = ""
            try:
                typed[name] = cast_value(raw, type_name)
            except ValueError as exc:
                if strict:
                    raise EngineError(
                        "ValidationException",
                        f"PipelineParameters: value of parameter {name!r} is not a valid {type_name}: {exc}",
                    ) from None
                typed[name] = raw
            listed.append({"Name": name, "Value": to_text(raw)})
        return typed, listed

    # ------------------------------------------------------------------ reads

    def _get(self, arn: str | None) -> _Execution:
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
            execution = self._get(arn)
            response: dict[str, Any] = {
                "PipelineArn": execution.pipeline_arn,
                "PipelineExecutionArn": execution.arn,
                "PipelineExecutionDisplayName": execution.display_name,
                "PipelineExecutionStatus": execution.status,
                "CreationTime": execution.creation_time,
                "LastModifiedTime": execution.last_modified_time,
            }
            if execution.description:
                response["PipelineExecutionDescription"] = execution.description
            if execution.failure_reason:
                response["FailureReason"] = execution.failure_reason
            experiment = execution.definition.get("PipelineExperimentConfig")
            if isinstance(experiment, dict):
                try:
                    resolved = self._resolve(execution, experiment)
                except _ResolutionError:
                    resolved = {}
                response["PipelineExperimentConfig"] = {
                    k: to_text(v) for k, v in resolved.items() if k in ("ExperimentName", "TrialName")
                }
            return response

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
        limit = _check_max_results(max_results)
        order = _check_sort_order(sort_order)
        with self._lock:
            execution = self._get(arn)
            runs = sorted(execution.runs.values(), key=lambda r: (r.start_time, r.seq))
            if order == "Descending":
                runs.reverse()
            offset = _decode_page_token(next_token, execution.arn)
            page = runs[offset : offset + limit]
            response: dict[str, Any] = {"PipelineExecutionSteps": [r.to_api() for r in page]}
            if offset + limit < len(runs):
                response["NextToken"] = _encode_page_token(execution.arn, offset + limit)
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
        limit = _check_max_results(max_results)
        order = _check_sort_order(sort_order)
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
            offset = _decode_page_token(next_token, pipeline_arn)
            page = executions[offset : offset + limit]
            summaries = []
            for e in page:
                summary: dict[str, Any] = {
                    "PipelineExecutionArn": e.arn,
                    "StartTime": e.creation_time,
                    "PipelineExecutionStatus": e.status,
                    "PipelineExecutionDisplayName": e.display_name,
                }
                if e.description:
                    summary["PipelineExecutionDescription"] = e.description
                if e.failure_reason:
                    summary["PipelineExecutionFailureReason"] = e.failure_reason
                summaries.append(summary)
            response: dict[str, Any] = {"PipelineExecutionSummaries": summaries}
            if offset + limit < len(executions):
                response["NextToken"] = _encode_page_token(pipeline_arn, offset + limit)
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
        token = _check_token(callback_token)
        outputs = _check_outputs(output_parameters)
        crt = _check_client_request_token(client_request_token)
        fingerprint = _fingerprint(token, outputs)
        with self._lock:
            replay = self._replay(account_id, "SendPipelineExecutionStepSuccess", crt, fingerprint)
            if replay is not None:
                return replay
            execution, run = self._lookup_token(account_id, token)
            step_def = execution.step_defs[run.name]
            outputs = self._check_declared_outputs(step_def, outputs)
            response = {"PipelineExecutionArn": execution.arn}
            if self._closed_check(execution, run):
                run.outputs = outputs
                run.close("Succeeded")
                execution.touch()
                self._advance(execution)
            self._accepted_closes[token] = self._accepted_closes.get(token, 0) + 1
            self._remember(account_id, "SendPipelineExecutionStepSuccess", crt, fingerprint, response)
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
        token = _check_token(callback_token)
        reason = _check_failure_reason(failure_reason)
        crt = _check_client_request_token(client_request_token)
        fingerprint = _fingerprint(token, reason)
        with self._lock:
            replay = self._replay(account_id, "SendPipelineExecutionStepFailure", crt, fingerprint)
            if replay is not None:
                return replay
            execution, run = self._lookup_token(account_id, token)
            response = {"PipelineExecutionArn": execution.arn}
            if self._closed_check(execution, run):
                run.close("Failed", reason)
                self._fail(execution, f"Step {run.name} failed: {reason}")
                execution.touch()
                self._advance(execution)
            self._accepted_closes[token] = self._accepted_closes.get(token, 0) + 1
            self._remember(account_id, "SendPipelineExecutionStepFailure", crt, fingerprint, response)
            return dict(response)

    def accepted_closes(self) -> dict[str, int]:
        """
        How many close requests the service accepted per token (``Send*Step*`` answered with
        success, not counting a replay of the same request). More than one means a step was
        closed twice: only possible with ``conflict_on_reclose`` off.
        """
        with self._lock:
            return dict(self._accepted_closes)

    def _lookup_token(self, account_id: str, token: str) -> tuple[_Execution, _StepRun]:
        found = self._tokens.get(token)
        if found is not None:
            execution = self._executions.get(found[0])
            if execution is not None and execution.account_id == account_id:
                return execution, execution.runs[found[1]]
        raise EngineError("ResourceNotFound", "No callback step with the given CallbackToken exists.")

    def _check_declared_outputs(
        self, step_def: _StepDef, outputs: list[dict[str, str]]
    ) -> list[dict[str, str]]:
        declared: dict[str, str] = {}
        for item in step_def.body.get("OutputParameters") or []:
            if isinstance(item, dict) and isinstance(item.get("OutputName"), str):
                declared[item["OutputName"]] = str(item.get("OutputType", "String"))
        kept: list[dict[str, str]] = []
        for output in outputs:
            name = output["Name"]
            if name not in declared:
                if self._settings.strict_output_names:
                    raise EngineError(
                        "ValidationException",
                        f"OutputParameters: output {name!r} is not declared by step {step_def.name} "
                        f"(declared: {', '.join(sorted(declared)) or 'none'})",
                    )
                continue
            type_name = declared[name]
            if self._settings.strict_output_types:
                try:
                    cast_value(output["Value"], type_name)
                except ValueError:
                    raise EngineError(
                        "ValidationException",
                        f"OutputParameters: value {output['Value']!r} of output {name!r} "
                        f"is not a valid {type_name}",
                    ) from None
            kept.append(output)
        return kept

    def _closed_check(self, execution: _Execution, run: _StepRun) -> bool:
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
        fingerprint = _fingerprint(arn)
        with self._lock:
            replay = self._replay(account_id, "StopPipelineExecution", client_request_token, fingerprint)
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
                execution.stop_requested = True
                execution.status = "Stopping"
                execution.touch()
                for run in sorted(execution.runs.values(), key=lambda r: r.seq):
                    if run.status not in OPEN_STEP_STATUSES:
                        continue
                    if run.type == "Callback":
                        run.status = "Stopping"
                        self._send_callback_message(execution, run, "Stopping")
                    else:
                        run.close("Stopped")
                self._finish_if_done(execution)
            self._remember(account_id, "StopPipelineExecution", client_request_token, fingerprint, response)
            return dict(response)

    # ------------------------------------------------------------------ idempotency

    def _replay(
        self, account_id: str, operation: str, token: str | None, fingerprint: str
    ) -> dict[str, Any] | None:
        if not token:
            return None
        seen = self._idempotency.get((account_id, token))
        if seen is None:
            return None
        if seen.operation != operation or seen.fingerprint != fingerprint:
            raise EngineError(
                "ValidationException",
                "ClientRequestToken: this token was already used for a different request "
                f"({seen.operation}); use a new ClientRequestToken for a new request.",
            )
        return dict(seen.response)

    def _remember(
        self,
        account_id: str,
        operation: str,
        token: str | None,
        fingerprint: str,
        response: dict[str, Any],
    ) -> None:
        if token:
            self._idempotency[(account_id, token)] = _IdempotentCall(operation, fingerprint, dict(response))

    # ------------------------------------------------------------------ running steps

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _is_active(self, execution: _Execution, step: _StepDef) -> bool:
        while step.parent is not None:
            condition_name, branch = step.parent
            run = execution.runs.get(condition_name)
            if run is None or run.status != "Succeeded" or run.outcome is not branch:
                return False
            step = execution.step_defs[condition_name]
        return True

    def _startable(self, execution: _Execution) -> Iterator[_StepDef]:
        for step in sorted(execution.step_defs.values(), key=lambda s: s.order):
            if step.name in execution.runs or not self._is_active(execution, step):
                continue
            deps = [execution.runs.get(d) for d in step.depends_on]
            if all(run is not None and run.status == "Succeeded" for run in deps):
                yield step

    def _advance(self, execution: _Execution) -> None:
        """Start every step that can start, repeatedly, then settle the execution's status."""
        progressed = True
        while progressed and not execution.failed and not execution.stop_requested:
            progressed = False
            for step in list(self._startable(execution)):
                if execution.failed or execution.stop_requested:
                    break
                self._start_step(execution, step)
                progressed = True
        self._finish_if_done(execution)

    def _finish_if_done(self, execution: _Execution) -> None:
        if execution.status in FINISHED_EXECUTION_STATUSES:
            return
        if any(run.status in OPEN_STEP_STATUSES for run in execution.runs.values()):
            return
        if execution.stop_requested:
            execution.status = "Stopped"
        elif execution.failed:
            execution.status = "Failed"
        elif next(self._startable(execution), None) is None:
            execution.status = "Succeeded"
        else:
            return
        execution.touch()

    def _fail(self, execution: _Execution, reason: str) -> None:
        if not execution.failed and not execution.stop_requested:
            execution.failed = True
            execution.failure_reason = reason

    def _start_step(self, execution: _Execution, step: _StepDef) -> None:
        run = _StepRun(
            name=step.name, type=step.type, seq=self._next_seq(), status="Starting", start_time=_now()
        )
        execution.runs[step.name] = run
        execution.touch()
        try:
            if step.type == "Callback":
                self._start_callback(execution, step, run)
            elif step.type == "Condition":
                arguments = step.body.get("Arguments") or {}
                outcome = all(
                    self._evaluate(execution, condition) for condition in arguments.get("Conditions") or []
                )
                run.outcome = outcome
                run.close("Succeeded")
            elif step.type == "Fail":
                arguments = step.body.get("Arguments") or {}
                message = self._resolve(execution, arguments.get("ErrorMessage", ""))
                text = to_text(message)
                run.error_message = text
                run.close("Failed", text)
                self._fail(execution, text)
            else:
                delay = self._settings.step_delay_seconds
                if delay > 0 and not self._closed:
                    run.status = "Executing"
                    timer = threading.Timer(delay, self._finish_delayed, args=(execution.arn, step.name))
                    timer.daemon = True
                    run.timer = timer
                    timer.start()
                else:
                    run.close("Succeeded")
        except _ResolutionError as exc:
            run.close("Failed", str(exc))
            self._fail(execution, f"Step {step.name} failed: {exc}")

    def _finish_delayed(self, arn: str, step_name: str) -> None:
        with self._lock:
            execution = self._executions.get(arn)
            if execution is None:
                return
            run = execution.runs.get(step_name)
            if run is None or run.status != "Executing":
                return
            run.timer = None
            run.close("Succeeded")
            execution.touch()
            self._advance(execution)

    def _start_callback(self, execution: _Execution, step: _StepDef, run: _StepRun) -> None:
        arguments = self._resolve(execution, step.body.get("Arguments") or {})
        if not isinstance(arguments, dict):
            raise _ResolutionError("Arguments of a callback step must be an object")
        queue_url = self._resolve(execution, step.body.get("SqsQueueUrl"))
        if not isinstance(queue_url, str) or not queue_url:
            raise _ResolutionError("SqsQueueUrl did not resolve to a URL")
        run.arguments = arguments
        run.queue_url = queue_url
        run.token = self._new_token()
        self._tokens[run.token] = (execution.arn, run.name)
        run.status = "Executing"
        try:
            self._send_callback_message(execution, run, "Executing", raise_errors=True)
        except Exception as exc:
            raise _ResolutionError(f"could not send the callback message to {queue_url}: {exc}") from None

    def _send_callback_message(
        self, execution: _Execution, run: _StepRun, status: str, *, raise_errors: bool = False
    ) -> None:
        body = json.dumps(
            {
                "token": run.token,
                "pipelineExecutionArn": execution.arn,
                "arguments": run.arguments or {},
                "status": status,
            }
        )
        try:
            self._send(run.queue_url or "", body, execution.region)
        except Exception:
            if raise_errors:
                raise

    def _new_token(self) -> str:
        while True:
            token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(10))
            if token not in self._tokens:
                return token

    # ------------------------------------------------------------------ expressions

    def _resolve(self, execution: _Execution, value: Any) -> Any:
        return resolve(value, lambda path: self._get_value(execution, path))

    def _get_value(self, execution: _Execution, path: str) -> Any:
        if path.startswith("Parameters."):
            name = path[len("Parameters.") :]
            if name not in execution.parameters:
                raise _ResolutionError(f"parameter {name!r} is not defined")
            return execution.parameters[name]
        if path.startswith("Execution."):
            attribute = path[len("Execution.") :]
            values: dict[str, str] = {
                "PipelineExecutionId": execution.execution_id,
                "PipelineExecutionArn": execution.arn,
                "PipelineName": execution.pipeline_name,
                "PipelineExecutionDisplayName": execution.display_name,
                "CurrentDateTime": _now().isoformat(),
            }
            if attribute not in values:
                raise _ResolutionError(f"unknown execution variable {path!r}")
            return values[attribute]
        match = OUTPUT_REF_RE.fullmatch(path)
        if match:
            step_name, output_name = match.group(1), match.group(3)
            run = execution.runs.get(step_name)
            if run is None or run.status != "Succeeded":
                raise _ResolutionError(f"step {step_name} has not succeeded, cannot read {path}")
            if run.type != "Callback":
                return f"<{path}>"
            declared = {
                item.get("OutputName"): str(item.get("OutputType", "String"))
                for item in execution.step_defs[step_name].body.get("OutputParameters") or []
                if isinstance(item, dict)
            }
            for output in run.outputs:
                if output["Name"] == output_name:
                    type_name = declared.get(output_name, "String")
                    try:
                        return cast_value(output["Value"], type_name)
                    except ValueError:
                        raise _ResolutionError(
                            f"output {output_name!r} of step {step_name} has value "
                            f"{output['Value']!r}, which is not a valid {type_name}"
                        ) from None
            raise _ResolutionError(f"step {step_name} did not set output {output_name!r}")
        if STEP_REF_RE.match(path):
            return f"<{path}>"
        raise _ResolutionError(f"unsupported expression {path!r}")

    def _evaluate(self, execution: _Execution, condition: Any) -> bool:
        if not isinstance(condition, dict):
            raise _ResolutionError("a condition must be an object")
        kind = condition.get("Type")
        if kind in _COMPARISONS:
            left = self._resolve(execution, condition.get("LeftValue"))
            right = self._resolve(execution, condition.get("RightValue"))
            return _compare(str(kind), left, right)
        if kind == "In":
            query = self._resolve(execution, condition.get("QueryValue"))
            values = self._resolve(execution, condition.get("Values") or [])
            if not isinstance(values, list):
                raise _ResolutionError("In: Values must be a list")
            return any(_compare("Equals", query, value) for value in values)
        if kind == "Not":
            return not self._evaluate(execution, condition.get("Expression"))
        if kind == "Or":
            return any(self._evaluate(execution, c) for c in condition.get("Conditions") or [])
        if kind == "And":
            return all(self._evaluate(execution, c) for c in condition.get("Conditions") or [])
        raise _ResolutionError(f"unsupported condition type {kind!r}")


_COMPARISONS: Final = frozenset(
    {"Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"}
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(kind: str, left: Any, right: Any) -> bool:
    if kind == "Equals":
        if _is_number(left) and _is_number(right):
            return bool(left == right)
        return type(left) is type(right) and bool(left == right)
    comparable = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise _ResolutionError(f"{kind}: cannot compare {left!r} with {right!r}")
    if kind == "GreaterThan":
        return bool(left > right)
    if kind == "GreaterThanOrEqualTo":
        return bool(left >= right)
    if kind == "LessThan":
        return bool(left < right)
    return bool(left <= right)


def _parse_steps(definition: dict[str, Any]) -> dict[str, _StepDef]:
    steps: dict[str, _StepDef] = {}

    def visit(items: Any, parent: tuple[str, bool] | None) -> None:
        if not isinstance(items, list):
            raise EngineError("ValidationException", "PipelineDefinition: Steps must be a list")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
                raise EngineError("ValidationException", "PipelineDefinition: every step needs a Name")
            name = item["Name"]
            kind = str(item.get("Type", ""))
            if name in steps:
                raise EngineError("ValidationException", f"PipelineDefinition: duplicate step name {name!r}")
            depends = item.get("DependsOn") or []
            if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
                raise EngineError(
                    "ValidationException", f"PipelineDefinition: DependsOn of {name} is invalid"
                )
            arguments = item.get("Arguments") or {}
            if kind == "Condition":
                if not isinstance(arguments, dict):
                    raise EngineError(
                        "ValidationException", f"PipelineDefinition: Arguments of {name} must be an object"
                    )
                refs = referenced_steps(arguments.get("Conditions") or [])
            else:
                refs = referenced_steps(item)
            steps[name] = _StepDef(
                name=name,
                type=kind,
                body=item,
                depends_on=frozenset(depends) | frozenset(refs - {name}),
                parent=parent,
                order=len(steps),
            )
            if kind == "Condition":
                visit(arguments.get("IfSteps") or [], (name, True))
                visit(arguments.get("ElseSteps") or [], (name, False))

    visit(definition.get("Steps") or [], None)
    for step in steps.values():
        missing = sorted(step.depends_on - steps.keys())
        if missing:
            raise EngineError(
                "ValidationException",
                f"PipelineDefinition: step {step.name} depends on unknown step(s) {', '.join(missing)}",
            )
    _check_acyclic(steps)
    return steps


def _check_acyclic(steps: dict[str, _StepDef]) -> None:
    state: dict[str, int] = {}

    def edges(step: _StepDef) -> set[str]:
        result = set(step.depends_on)
        if step.parent is not None:
            result.add(step.parent[0])
        return result

    for root, root_step in steps.items():
        if state.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges(root_step)))]
        state[root] = 1
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[name] = 2
                stack.pop()
                continue
            if state.get(child) == 1:
                raise EngineError(
                    "ValidationException", f"PipelineDefinition: steps {name} and {child} form a cycle"
                )
            if not state.get(child):
                state[child] = 1
                stack.append((child, iter(edges(steps[child]))))


def _fingerprint(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def _check_token(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'callbackToken' failed to satisfy constraint: "
            "CallbackToken must be exactly 10 characters matching [a-zA-Z0-9]+",
        )
    return value


def _check_client_request_token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not MIN_CLIENT_REQUEST_TOKEN <= len(value) <= MAX_CLIENT_REQUEST_TOKEN:
        length = len(value) if isinstance(value, str) else "?"
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'clientRequestToken' failed to satisfy constraint: "
            f"ClientRequestToken must be {MIN_CLIENT_REQUEST_TOKEN}..{MAX_CLIENT_REQUEST_TOKEN} "
            f"characters long (got {length})",
        )
    return value


def _check_failure_reason(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FAILURE_REASON:
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'failureReason' failed to satisfy constraint: "
            f"FailureReason must be at most {MAX_FAILURE_REASON} characters long",
        )
    return value


def _check_outputs(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EngineError("ValidationException", "OutputParameters must be a list")
    if len(value) > MAX_OUTPUT_PARAMETERS:
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'outputParameters' failed to satisfy constraint: "
            f"OutputParameters must have at most {MAX_OUTPUT_PARAMETERS} members (got {len(value)})",
        )
    outputs: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise EngineError("ValidationException", f"OutputParameters.{index} must be an object")
        name = item.get("Name")
        raw = item.get("Value")
        if not isinstance(name, str) or len(name) > MAX_OUTPUT_NAME:
            raise EngineError(
                "ValidationException",
                f"1 validation error detected: Value at 'outputParameters.{index}.member.name' failed to "
                f"satisfy constraint: OutputParameters Name must be a string of at most {MAX_OUTPUT_NAME} "
                "characters",
            )
        if not isinstance(raw, str) or len(raw) > MAX_OUTPUT_VALUE:
            raise EngineError(
                "ValidationException",
                f"1 validation error detected: Value at 'outputParameters.{index}.member.value' failed "
                f"to satisfy constraint: OutputParameters Value of {name!r} must be a string of at most "
                f"{MAX_OUTPUT_VALUE} characters",
            )
        if name in seen:
            raise EngineError("ValidationException", f"OutputParameters: output {name!r} is given twice")
        seen.add(name)
        outputs.append({"Name": name, "Value": raw})
    return outputs


def _check_max_results(value: Any) -> int:
    if value is None:
        return 100
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise EngineError(
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'maxResults' failed to satisfy "
            "constraint: MaxResults must be between 1 and 100",
        )
    return value


def _check_sort_order(value: Any) -> str:
    if value is None:
        return "Descending"
    if value not in ("Ascending", "Descending"):
        raise EngineError(
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'sortOrder' failed to satisfy "
            "constraint: SortOrder must be Ascending or Descending",
        )
    return str(value)


def _encode_page_token(scope: str, offset: int) -> str:
    raw = json.dumps({"scope": scope, "offset": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_page_token(token: str | None, scope: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = data["offset"]
        if data["scope"] != scope or not isinstance(offset, int) or offset < 0:
            raise ValueError("token does not belong to this listing")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise EngineError("ValidationException", "NextToken is not valid for this request") from None
    return offset
