"""
The SageMaker Pipelines callback-step protocol, in plain Python.

Everything that decides what a callback *is* lives here and imports nothing from Airflow:
parsing SQS messages into :class:`CallbackMessage`, deciding whether a callback is the one a
waiter wants (:class:`CallbackMatcher`), encoding output parameters for
``SendPipelineExecutionStepSuccess``, cutting failure reasons to the service's limit and deriving
deterministic ``ClientRequestToken`` values. Hooks, triggers, sensors and operators all lean on
these functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal

from airflow_sm_callback.protocol.expressions import walk_steps

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_FAILURE_REASON",
    "MAX_OUTPUT_NAME",
    "MAX_OUTPUT_PARAMETERS",
    "MAX_OUTPUT_VALUE",
    "CallbackMatcher",
    "CallbackMessage",
    "CallbackStatus",
    "InvalidCallbackMessage",
    "InvalidOutputParameters",
    "MessageDefect",
    "Outcome",
    "OutputType",
    "client_request_token",
    "coerce_output_value",
    "encode_output_parameters",
    "encode_scalar",
    "mask_token",
    "parse_execution_arn",
    "truncate_failure_reason",
]

#: The largest SQS message body, in bytes (1 MiB).
MAX_BODY_BYTES: Final = 1024 * 1024
#: ``SendPipelineExecutionStepSuccess`` accepts at most this many output parameters.
MAX_OUTPUT_PARAMETERS: Final = 50
#: Longest output parameter name, in characters.
MAX_OUTPUT_NAME: Final = 256
#: Longest output parameter value, in characters.
MAX_OUTPUT_VALUE: Final = 1024
#: Longest ``FailureReason``, in characters.
MAX_FAILURE_REASON: Final = 256

TOKEN_RE: Final = re.compile(r"[a-zA-Z0-9]{10}")
EXECUTION_ARN_RE: Final = re.compile(
    r"arn:(?P<partition>aws[a-z\-]*):sagemaker:(?P<region>[a-z0-9\-]*):(?P<account>[0-9]{12}):"
    r"pipeline/(?P<pipeline>[^/\s]+)/execution/(?P<execution>[^/\s]+)"
)
_TRUNCATION_MARK: Final = " ...[truncated]"


class CallbackStatus(StrEnum):
    """The ``status`` a callback message carries."""

    EXECUTING = "Executing"
    STOPPING = "Stopping"


class Outcome(StrEnum):
    """How a step is closed."""

    SUCCESS = "success"
    FAILURE = "failure"


class OutputType(StrEnum):
    """The ``OutputType`` a callback step declares for an output parameter."""

    STRING = "String"
    INTEGER = "Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"


class MessageDefect(StrEnum):
    """Why a message is not a usable callback."""

    NOT_TEXT = "not-text"
    TOO_LARGE = "too-large"
    NOT_JSON = "not-json"
    NOT_CALLBACK = "not-callback"
    MISSING_TOKEN = "missing-token"
    BAD_TOKEN = "bad-token"
    MISSING_ARN = "missing-arn"
    BAD_ARN = "bad-arn"
    BAD_ARGUMENTS = "bad-arguments"
    BAD_STATUS = "bad-status"


class InvalidCallbackMessage(ValueError):
    """
    A message that is not a usable SageMaker callback.

    The text names the defect and never contains the token. ``defect`` tells the kind;
    :attr:`foreign` is true for messages that are not callbacks at all (other producers on a
    shared queue), as opposed to callbacks that are broken.
    """

    def __init__(self, defect: MessageDefect, detail: str, *, message_id: str | None = None) -> None:
        self.defect = defect
        self.detail = detail
        self.message_id = message_id
        where = f"message {message_id}: " if message_id else ""
        super().__init__(f"{where}{detail}")

    @property
    def foreign(self) -> bool:
        """Whether the message is not a callback at all (not JSON, or JSON of another shape)."""
        return self.defect in {
            MessageDefect.NOT_TEXT,
            MessageDefect.TOO_LARGE,
            MessageDefect.NOT_JSON,
            MessageDefect.NOT_CALLBACK,
        }


class InvalidOutputParameters(ValueError):
    """
    Output parameters that ``SendPipelineExecutionStepSuccess`` would not accept.

    :attr:`parameter` names the offending output (``None`` for defects of the whole set).
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        self.parameter = parameter
        super().__init__(message)


def mask_token(token: str | None) -> str:
    """Return a form of a callback token that is safe to print: its first two characters and stars."""
    if not token:
        return "<none>"
    return f"{token[:2]}********"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_execution_arn(arn: str) -> tuple[str, str, str, str]:
    """
    Split a pipeline execution ARN into ``(region, account_id, pipeline_name, execution_id)``.

    :raises ValueError: if ``arn`` is not a SageMaker pipeline execution ARN.
    """
    match = EXECUTION_ARN_RE.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise ValueError(
            f"not a SageMaker pipeline execution ARN: {_short(repr(arn))} "
            "(expected arn:aws:sagemaker:<region>:<account>:pipeline/<name>/execution/<id>)"
        )
    return match["region"], match["account"], match["pipeline"], match["execution"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True, slots=True)
class CallbackMessage:
    """
    One callback message from a SageMaker Pipelines callback step.

    Built with :meth:`from_sqs` (a message as ``ReceiveMessage`` returns it) or :meth:`from_body`.
    The token is a secret: ``repr`` masks it, :meth:`to_dict` carries it (for XCom, by design).

    :param token: the one-time callback token (10 characters).
    :param pipeline_execution_arn: the execution the step belongs to.
    :param pipeline_name: the pipeline's name, from the ARN.
    :param execution_id: the execution id, from the ARN.
    :param arguments: the step's resolved inputs.
    :param status: ``Executing`` or ``Stopping``.
    :param message_id: the SQS message id.
    :param receipt_handle: the SQS receipt handle of this receive.
    :param receive_count: ``ApproximateReceiveCount`` of the message.
    :param sent_at: when SageMaker sent the message (``SentTimestamp``).
    :param step_name: the step's ``Name`` in the pipeline definition, when it was looked up.
    """

    token: str = field(repr=False)
    pipeline_execution_arn: str
    pipeline_name: str
    execution_id: str
    arguments: dict[str, Any]
    status: CallbackStatus = CallbackStatus.EXECUTING
    message_id: str | None = None
    receipt_handle: str | None = field(default=None, repr=False)
    receive_count: int = 1
    sent_at: datetime | None = None
    step_name: str | None = None

    def __repr__(self) -> str:
        return (
            f"CallbackMessage(token={mask_token(self.token)}, "
            f"pipeline_execution_arn={self.pipeline_execution_arn!r}, status={self.status.value!r}, "
            f"message_id={self.message_id!r}, step_name={self.step_name!r})"
        )

    @property
    def is_stopping(self) -> bool:
        """Whether this is the second message SageMaker sends after ``StopPipelineExecution``."""
        return self.status is CallbackStatus.STOPPING

    @classmethod
    def from_body(
        cls,
        body: str | bytes,
        *,
        message_id: str | None = None,
        receipt_handle: str | None = None,
        receive_count: int = 1,
        sent_at: datetime | None = None,
    ) -> CallbackMessage:
        """
        Parse a message body.

        :raises InvalidCallbackMessage: naming the defect; the only exception this raises.
        """

        def fail(defect: MessageDefect, detail: str) -> InvalidCallbackMessage:
            return InvalidCallbackMessage(defect, detail, message_id=message_id)

        if isinstance(body, bytes | bytearray | memoryview):
            raw = bytes(body)
            if len(raw) > MAX_BODY_BYTES:
                raise fail(MessageDefect.TOO_LARGE, f"body is {len(raw)} bytes, over the SQS limit of 1 MiB")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise fail(
                    MessageDefect.NOT_TEXT, f"body is not UTF-8 text (bad byte at {err.start})"
                ) from None
        elif isinstance(body, str):
            text = body
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise fail(MessageDefect.NOT_TEXT, "body is not valid Unicode text") from None
            if size > MAX_BODY_BYTES:
                raise fail(MessageDefect.TOO_LARGE, f"body is {size} bytes, over the SQS limit of 1 MiB")
        else:
            raise fail(MessageDefect.NOT_TEXT, f"body is a {type(body).__name__}, not text")

        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise fail(MessageDefect.NOT_JSON, "body is JSON nested too deeply to parse") from None
        except ValueError as err:
            raise fail(MessageDefect.NOT_JSON, f"body is not JSON ({_short(str(err))})") from None
        if not isinstance(data, dict):
            raise fail(
                MessageDefect.NOT_CALLBACK,
                f"body is JSON but not an object (got {type(data).__name__}); not a callback message",
            )
        if "token" not in data and "pipelineExecutionArn" not in data:
            keys = ", ".join(sorted(_short(str(k), 30) for k in data)[:5]) or "none"
            raise fail(
                MessageDefect.NOT_CALLBACK,
                f"not a SageMaker callback message: no 'token' and no 'pipelineExecutionArn' (keys: {keys})",
            )

        token = data.get("token")
        if token is None:
            raise fail(MessageDefect.MISSING_TOKEN, "callback message has no 'token'")
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            shape = f"{len(token)} characters" if isinstance(token, str) else f"a {type(token).__name__}"
            raise fail(
                MessageDefect.BAD_TOKEN,
                f"callback 'token' is malformed: expected exactly 10 characters [a-zA-Z0-9], got {shape}",
            )

        arn = data.get("pipelineExecutionArn")
        if arn is None:
            raise fail(MessageDefect.MISSING_ARN, "callback message has no 'pipelineExecutionArn'")
        try:
            _, _, pipeline_name, execution_id = parse_execution_arn(arn)
        except ValueError as err:
            raise fail(MessageDefect.BAD_ARN, f"'pipelineExecutionArn' is malformed: {err}") from None

        arguments = data.get("arguments", {})
        if not isinstance(arguments, dict):
            raise fail(
                MessageDefect.BAD_ARGUMENTS,
                f"callback 'arguments' must be a JSON object, got {type(arguments).__name__}",
            )

        status_values = {
            str(v) if isinstance(v, str) else repr(v) for k, v in data.items() if k.lower() == "status"
        }
        if len(status_values) > 1:
            raise fail(MessageDefect.BAD_STATUS, "callback message has conflicting 'status' keys")
        raw_status = next(iter(status_values), CallbackStatus.EXECUTING.value)
        try:
            status = CallbackStatus(raw_status.capitalize())
        except ValueError:
            raise fail(
                MessageDefect.BAD_STATUS,
                f"callback 'status' must be Executing or Stopping, got {_short(raw_status, 40)!r}",
            ) from None

        return cls(
            token=token,
            pipeline_execution_arn=arn,
            pipeline_name=pipeline_name,
            execution_id=execution_id,
            arguments=arguments,
            status=status,
            message_id=message_id,
            receipt_handle=receipt_handle,
            receive_count=receive_count,
            sent_at=sent_at,
        )

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any]) -> CallbackMessage:
        """
        Parse one message as ``ReceiveMessage`` returns it (``Body``, ``MessageId``, ``Attributes``).

        :raises InvalidCallbackMessage: naming the defect.
        """
        meta = sqs_metadata(message)
        return cls.from_body(message.get("Body", ""), **meta)

    def with_step_name(self, step_name: str | None) -> CallbackMessage:
        """Return a copy that knows its step's ``Name``."""
        return replace(self, step_name=step_name)

    def to_dict(self) -> dict[str, Any]:
        """
        The JSON-serializable form handed to downstream tasks (XCom) and trigger events.

        It carries the token, by design: the task that closes the step needs it.
        """
        return {
            "token": self.token,
            "pipeline_execution_arn": self.pipeline_execution_arn,
            "pipeline_name": self.pipeline_name,
            "execution_id": self.execution_id,
            "step_name": self.step_name,
            "arguments": self.arguments,
            "status": self.status.value,
            "message_id": self.message_id,
            "receive_count": self.receive_count,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallbackMessage:
        """
        Rebuild a callback from :meth:`to_dict` output (for example the sensor's XCom).

        :raises InvalidCallbackMessage: if the dict does not describe a callback.
        """
        if not isinstance(data, Mapping):
            raise InvalidCallbackMessage(
                MessageDefect.NOT_CALLBACK, f"expected a callback dict, got {type(data).__name__}"
            )
        body = {
            "token": data.get("token"),
            "pipelineExecutionArn": data.get("pipeline_execution_arn"),
            "arguments": data.get("arguments") or {},
            "status": data.get("status") or CallbackStatus.EXECUTING.value,
        }
        sent_at = data.get("sent_at")
        parsed = cls.from_body(
            json.dumps(body),
            message_id=data.get("message_id"),
            receive_count=int(data.get("receive_count") or 1),
            sent_at=datetime.fromisoformat(sent_at) if isinstance(sent_at, str) else None,
        )
        return parsed.with_step_name(data.get("step_name"))


def sqs_metadata(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message id, receipt handle, receive count and sent time of a ``ReceiveMessage`` item."""
    attributes = message.get("Attributes") or {}
    try:
        receive_count = int(attributes.get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        receive_count = 1
    sent_at = None
    if "SentTimestamp" in attributes:
        try:
            sent_at = datetime.fromtimestamp(int(attributes["SentTimestamp"]) / 1000, tz=UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            sent_at = None
    return {
        "message_id": message.get("MessageId"),
        "receipt_handle": message.get("ReceiptHandle"),
        "receive_count": receive_count,
        "sent_at": sent_at,
    }


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------


def _argument_equals(expected: Any, actual: Any) -> bool:
    """
    JSON-aware equality: booleans are not numbers, ``1 == 1.0``, and a *string* expected value
    matches a scalar by its protocol encoding (templated values render to text).
    """
    if isinstance(expected, bool) or isinstance(actual, bool):
        if isinstance(expected, str) and isinstance(actual, bool):
            return expected.lower() == encode_scalar(actual)
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, str) and isinstance(actual, int | float) and not isinstance(actual, bool):
        try:
            return expected == encode_scalar(actual) or float(expected) == float(actual)
        except (ValueError, OverflowError):
            return False
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return expected.keys() == actual.keys() and all(
            _argument_equals(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(
            _argument_equals(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return type(expected) is type(actual) and expected == actual


@dataclass(frozen=True, slots=True)
class CallbackMatcher:
    """
    Says whether a callback is the one a waiter wants.

    Every criterion given must hold. JSON-serializable through :meth:`to_dict`, so triggers
    can carry it.

    :param pipeline_execution_arn: the execution the callback must belong to.
    :param pipeline_name: the pipeline the callback must belong to.
    :param step_name: the callback step's ``Name`` in the pipeline definition. A message carries
        no step name: it is mapped from the token with ``ListPipelineExecutionSteps``.
    :param arguments: argument values that must be equal in the callback's ``arguments``.
    """

    pipeline_execution_arn: str | None = None
    pipeline_name: str | None = None
    step_name: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.pipeline_execution_arn or self.pipeline_name or self.step_name or self.arguments):
            raise ValueError(
                "say which callback to wait for: a pipeline execution ARN, a pipeline name, "
                "a callback step name or argument values"
            )
        if self.pipeline_execution_arn is not None:
            _, _, pipeline, _ = parse_execution_arn(self.pipeline_execution_arn)
            if self.pipeline_name is not None and pipeline.lower() != self.pipeline_name.lower():
                raise ValueError(
                    f"pipeline_execution_arn belongs to pipeline {pipeline!r}, "
                    f"not to pipeline_name {self.pipeline_name!r}: no callback can match both"
                )
        if not isinstance(self.arguments, Mapping):
            raise ValueError(f"arguments must be a mapping, got {type(self.arguments).__name__}")
        if self.step_name is not None and not self.pipeline_execution_arn and not self.pipeline_name:
            # Allowed, but every candidate message then costs a step look-up.
            pass

    @property
    def needs_step_name(self) -> bool:
        """Whether matching needs the callback's step name (a ``ListPipelineExecutionSteps`` look-up)."""
        return self.step_name is not None

    def matches_message(self, callback: CallbackMessage) -> bool:
        """Whether the callback matches every criterion that does not need its step name."""
        if (
            self.pipeline_execution_arn is not None
            and callback.pipeline_execution_arn != self.pipeline_execution_arn
        ):
            return False
        # SageMaker lower-cases the pipeline name in execution ARNs.
        if self.pipeline_name is not None and callback.pipeline_name.lower() != self.pipeline_name.lower():
            return False
        for name, expected in self.arguments.items():
            if name not in callback.arguments or not _argument_equals(expected, callback.arguments[name]):
                return False
        return True

    def matches(self, callback: CallbackMessage, step_name: str | None = None) -> bool:
        """
        Whether the callback is the one wanted.

        :param step_name: the callback's step name, when :attr:`needs_step_name`; defaults to
            ``callback.step_name``.
        """
        if not self.matches_message(callback):
            return False
        if self.step_name is not None:
            return (step_name or callback.step_name) == self.step_name
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (``from_dict`` inverts it)."""
        return {
            "pipeline_execution_arn": self.pipeline_execution_arn,
            "pipeline_name": self.pipeline_name,
            "step_name": self.step_name,
            "arguments": dict(self.arguments),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallbackMatcher:
        """Rebuild a matcher from :meth:`to_dict` output."""
        return cls(
            pipeline_execution_arn=data.get("pipeline_execution_arn") or None,
            pipeline_name=data.get("pipeline_name") or None,
            step_name=data.get("step_name") or None,
            arguments=dict(data.get("arguments") or {}),
        )

    def describe(self) -> str:
        """A short human description, for logs and errors."""
        parts = []
        if self.pipeline_execution_arn:
            parts.append(f"execution {self.pipeline_execution_arn}")
        if self.pipeline_name:
            parts.append(f"pipeline {self.pipeline_name}")
        if self.step_name:
            parts.append(f"step {self.step_name}")
        if self.arguments:
            parts.append(f"arguments {json.dumps(dict(self.arguments), sort_keys=True, default=str)}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Output parameters
# ----------------------------------------------------------------------------------------------


def _is_numpy_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_" and type(value).__module__ == "numpy"


def _check_text(text: str, what: str, parameter: str | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOutputParameters(
            f"{what} contains characters that are not valid Unicode text (lone surrogates)",
            parameter=parameter,
        ) from None


def encode_scalar(value: Any, *, name: str | None = None) -> str:
    """
    Encode one output value the way the protocol page recommends.

    ``bool`` -> ``"true"``/``"false"``; integers -> decimal; floats -> ``repr`` (finite only);
    strings as they are. ``None``, containers and other types are rejected.

    :raises InvalidOutputParameters: naming the parameter when ``name`` is given.
    """
    label = f"output parameter {name!r}" if name is not None else "value"
    if value is None:
        raise InvalidOutputParameters(
            f"{label} is None; callback outputs cannot be null (send a string such as '' instead)",
            parameter=name,
        )
    if isinstance(value, bool) or _is_numpy_bool(value):
        return "true" if value else "false"
    if isinstance(value, str):
        _check_text(value, label, name)
        return value
    if isinstance(value, numbers.Integral):
        try:
            return str(int(value))
        except ValueError:
            raise InvalidOutputParameters(
                f"{label} is an integer too large to encode", parameter=name
            ) from None
    if isinstance(value, numbers.Real | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidOutputParameters(f"{label} is {number!r}, not a finite number", parameter=name)
        return repr(number)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        raise InvalidOutputParameters(
            f"{label} is a nested value ({type(value).__name__}); callback outputs are scalars "
            "(string, integer, float or boolean)",
            parameter=name,
        )
    raise InvalidOutputParameters(
        f"{label} has type {type(value).__name__}; callback outputs are string, integer, float or boolean",
        parameter=name,
    )


_INT_RE = re.compile(r"[+-]?\d+")


def coerce_output_value(name: str, value: Any, declared: OutputType | str) -> str:
    """
    Convert ``value`` to the wire form of the type the step *declares* for output ``name``.

    Text is parsed (Jinja renders everything to strings unless the DAG renders natively):
    ``"7"`` fits ``Integer``, ``"True"`` fits ``Boolean``, ``"0.5"`` fits ``Float``.

    :raises InvalidOutputParameters: when the value does not fit, naming the output and the type.
    """
    try:
        kind = OutputType(declared)
    except ValueError:
        raise InvalidOutputParameters(
            f"output parameter {name!r} declares unknown OutputType {declared!r}", parameter=name
        ) from None

    def misfit(reason: str = "") -> InvalidOutputParameters:
        shown = _short(repr(value), 60)
        return InvalidOutputParameters(
            f"output parameter {name!r} is declared {kind.value} but got {shown}{reason}", parameter=name
        )

    if value is None or isinstance(value, Mapping | list | tuple | set | frozenset):
        encode_scalar(value, name=name)  # raises the precise error
    if kind is OutputType.STRING:
        return encode_scalar(value, name=name)
    if kind is OutputType.BOOLEAN:
        if isinstance(value, bool) or _is_numpy_bool(value):
            return encode_scalar(value, name=name)
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower()
        raise misfit(" (expected true or false)")
    if isinstance(value, bool) or _is_numpy_bool(value):
        raise misfit(" (a boolean is not a number)")
    if kind is OutputType.INTEGER:
        if isinstance(value, numbers.Integral):
            return encode_scalar(value, name=name)
        if isinstance(value, numbers.Real | Decimal):
            number = float(value)
            if math.isfinite(number) and number.is_integer():
                return str(int(number))
            raise misfit(" (not a whole number)")
        if isinstance(value, str):
            text = value.strip()
            if _INT_RE.fullmatch(text) and len(text) <= MAX_OUTPUT_VALUE:
                return str(int(text))
            try:
                number = float(text)
            except ValueError:
                raise misfit() from None
            if math.isfinite(number) and number.is_integer():
                return str(int(number))
            raise misfit(" (not a whole number)")
        raise misfit()
    # Float
    if isinstance(value, numbers.Real | Decimal):
        return encode_scalar(float(value), name=name)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise misfit() from None
        if not math.isfinite(number):
            raise misfit(" (not a finite number)")
        return repr(number)
    raise misfit()


def _iter_pairs(parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Iterable[tuple[Any, Any]]:
    if isinstance(parameters, Mapping):
        yield from parameters.items()
        return
    if isinstance(parameters, str | bytes) or not isinstance(parameters, Sequence):
        raise InvalidOutputParameters(
            "output parameters must be a mapping {name: value} or a list of {'Name', 'Value'}, "
            f"got {type(parameters).__name__}"
        )
    for index, item in enumerate(parameters):
        if not isinstance(item, Mapping) or set(item) != {"Name", "Value"}:
            keys = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
            raise InvalidOutputParameters(
                f"output parameter #{index} must be {{'Name': ..., 'Value': ...}}, got {keys}"
            )
        yield item["Name"], item["Value"]


def encode_output_parameters(
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    declared: Mapping[str, OutputType | str] | None = None,
) -> list[dict[str, str]]:
    """
    Validate and encode output parameters for ``SendPipelineExecutionStepSuccess``.

    :param parameters: ``{name: value}`` or ``[{"Name": ..., "Value": ...}]``.
    :param declared: the step's declared ``{OutputName: OutputType}``. When given, every value is
        converted to its declared type and a name the step does not declare is an error.
    :return: ``[{"Name": name, "Value": text}]`` in the order given.
    :raises InvalidOutputParameters: on the first defect, naming the parameter.
    """
    if parameters is None:
        return []
    pairs = list(_iter_pairs(parameters))
    if len(pairs) > MAX_OUTPUT_PARAMETERS:
        raise InvalidOutputParameters(
            f"{len(pairs)} output parameters given; a callback step accepts at most {MAX_OUTPUT_PARAMETERS}"
        )
    encoded: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if not isinstance(name, str):
            raise InvalidOutputParameters(
                f"output parameter name {_short(repr(name), 40)} is a {type(name).__name__}, not a string"
            )
        if not 1 <= len(name) <= MAX_OUTPUT_NAME:
            raise InvalidOutputParameters(
                f"output parameter name {_short(name, 40)!r} has {len(name)} characters; "
                f"names have 1 to {MAX_OUTPUT_NAME}",
                parameter=name,
            )
        _check_text(name, "output parameter name", name)
        if name in seen:
            raise InvalidOutputParameters(f"output parameter {name!r} is given twice", parameter=name)
        seen.add(name)
        if declared is not None:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise InvalidOutputParameters(
                    f"output parameter {name!r} is not declared by the callback step (it declares: {known})",
                    parameter=name,
                )
            text = coerce_output_value(name, value, declared[name])
        else:
            text = encode_scalar(value, name=name)
        if len(text) > MAX_OUTPUT_VALUE:
            raise InvalidOutputParameters(
                f"output parameter {name!r} has a value of {len(text)} characters; at most "
                f"{MAX_OUTPUT_VALUE} are allowed",
                parameter=name,
            )
        encoded.append({"Name": name, "Value": text})
    return encoded


# ----------------------------------------------------------------------------------------------
# Failure reasons and request tokens
# ----------------------------------------------------------------------------------------------


def truncate_failure_reason(reason: object, limit: int = MAX_FAILURE_REASON) -> str:
    """
    Cut a failure reason to ``limit`` characters, keeping the start and marking the cut.

    Never splits a character from the combining marks that follow it, and drops text that is
    not valid Unicode (lone surrogates) so the request can be encoded.
    """
    text = str(reason) if reason is not None else ""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit:
        return text
    cut = max(0, limit - len(_TRUNCATION_MARK))
    while cut > 0 and unicodedata.combining(text[cut]):
        cut -= 1
    return text[:cut].rstrip() + _TRUNCATION_MARK


def client_request_token(
    *,
    callback_token: str,
    outcome: Outcome | Literal["success", "failure"],
    dag_id: str = "",
    run_id: str = "",
    task_id: str = "",
    map_index: int = -1,
) -> str:
    """
    Derive the ``ClientRequestToken`` for closing one step one way.

    Derived from what identifies the intent (DAG id, run id, task id, map index, callback token,
    outcome), not from the try number, so a retried task repeats the same request and the
    service completes it at most once. 72 characters (the service accepts 32 to 128).
    """
    payload = json.dumps(
        [dag_id, run_id, task_id, int(map_index), callback_token, Outcome(outcome).value],
        separators=(",", ":"),
    )
    return "airflow-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# Received messages and step state
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnparsedMessage:
    """A message on the queue that is not a usable callback; never deleted by this package."""

    message_id: str | None
    receipt_handle: str | None = field(repr=False)
    receive_count: int
    error: InvalidCallbackMessage


@dataclass(frozen=True, slots=True)
class ReceivedMessages:
    """What one ``ReceiveMessage`` returned: parsed callbacks and unparseable messages, apart."""

    callbacks: list[CallbackMessage] = field(default_factory=list)
    invalid: list[UnparsedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.callbacks) + len(self.invalid)

    @classmethod
    def parse(cls, messages: Iterable[Mapping[str, Any]]) -> ReceivedMessages:
        """Parse every message of a ``ReceiveMessage`` response, keeping the unparseable ones apart."""
        received = cls()
        for message in messages:
            try:
                received.callbacks.append(CallbackMessage.from_sqs(message))
            except InvalidCallbackMessage as err:
                meta = sqs_metadata(message)
                received.invalid.append(
                    UnparsedMessage(
                        message_id=meta["message_id"],
                        receipt_handle=meta["receipt_handle"],
                        receive_count=meta["receive_count"],
                        error=err,
                    )
                )
        return received


#: Step statuses of a step that is still waiting to be closed.
OPEN_STEP_STATUSES: Final = frozenset({"Starting", "Executing", "Stopping"})
#: Step statuses of a step that is closed for good.
CLOSED_STEP_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
#: Execution statuses of an execution that has ended.
ENDED_EXECUTION_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})


@dataclass(frozen=True, slots=True)
class CallbackStep:
    """
    A callback step of an execution, as ``ListPipelineExecutionSteps`` shows it.

    :param name: the step's ``Name`` in the pipeline definition.
    :param status: ``StepStatus`` (``Starting|Executing|Stopping|Stopped|Failed|Succeeded``).
    :param token: the step's callback token (``Metadata.Callback.CallbackToken``), when it has one.
    """

    name: str
    status: str
    token: str | None = field(default=None, repr=False)
    queue_url: str | None = None
    output_parameters: dict[str, str] = field(default_factory=dict)
    failure_reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """Whether the step still waits to be closed."""
        return self.status in OPEN_STEP_STATUSES

    @property
    def is_closed(self) -> bool:
        """Whether the step was closed (succeeded, failed or stopped)."""
        return self.status in CLOSED_STEP_STATUSES

    @classmethod
    def from_api(cls, step: Mapping[str, Any]) -> CallbackStep | None:
        """Build from one ``PipelineExecutionSteps`` item; ``None`` when it is not a callback step."""
        callback = (step.get("Metadata") or {}).get("Callback")
        if callback is None:
            return None
        return cls(
            name=step.get("StepName", ""),
            status=step.get("StepStatus", ""),
            token=callback.get("CallbackToken"),
            queue_url=callback.get("SqsQueueUrl"),
            output_parameters={p["Name"]: p.get("Value", "") for p in callback.get("OutputParameters") or []},
            failure_reason=step.get("FailureReason"),
            started_at=step.get("StartTime"),
            ended_at=step.get("EndTime"),
        )


def callback_steps_in_definition(definition: Mapping[str, Any] | str) -> dict[str, dict[str, OutputType]]:
    """
    Every callback step of a pipeline definition (condition branches included) with its declared outputs.

    :return: ``{step name: {output name: OutputType}}``.
    :raises ValueError: if the definition is not JSON or declares an unknown ``OutputType``.
    """
    if isinstance(definition, str):
        try:
            definition = json.loads(definition)
        except ValueError as err:
            raise ValueError(f"pipeline definition is not JSON ({_short(str(err))})") from None
    if not isinstance(definition, Mapping):
        raise ValueError("pipeline definition is not a JSON object")
    found: dict[str, dict[str, OutputType]] = {}
    for step in walk_steps(definition.get("Steps")):
        if step.get("Type") != "Callback":
            continue
        outputs: dict[str, OutputType] = {}
        for output in step.get("OutputParameters") or []:
            name, kind = output.get("OutputName"), output.get("OutputType", "String")
            try:
                outputs[name] = OutputType(kind)
            except ValueError:
                raise ValueError(
                    f"callback step {step.get('Name')!r} output {name!r} has unknown type {kind!r}"
                ) from None
        found[step.get("Name", "")] = outputs
    return found


class CallbackStepError(RuntimeError):
    """A callback step could not be closed (or looked up) the way it was asked."""


class AmbiguousCallbackStep(CallbackStepError):
    """Several callback steps of one execution are open; say which one with its step name."""


def register_token(token: str) -> None:
    """Register a callback token with Airflow's secrets masker (and the supervisor's), from sync code."""
    from airflow.sdk.log import mask_secret

    mask_secret(token)


async def register_token_async(token: str) -> None:
    """Register a callback token with Airflow's secrets masker from async code (triggers)."""
    from airflow.sdk.log import amask_secret

    await amask_secret(token)


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
