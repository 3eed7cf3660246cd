"""
Callback messages: what SageMaker puts on the queue, parsed, with the defect named when it is not usable.

:class:`CallbackMessage` is one callback (``from_sqs``, ``from_body``, ``from_dict``); a message
that is not a usable callback raises :class:`InvalidCallbackMessage` naming the defect, never
the token. :class:`ReceivedMessages` keeps the callbacks of one receive apart from the messages
that are not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from airflow_sm_callback.protocol.tokens import TOKEN_RE, mask_token, short

#: The largest SQS message body, in bytes (1 MiB).
MAX_BODY_BYTES: Final = 1024 * 1024
EXECUTION_ARN_RE: Final = re.compile(
    r"arn:(?P<partition>aws[a-z\-]*):sagemaker:(?P<region>[a-z0-9\-]*):(?P<account>[0-9]{12}):"
    r"pipeline/(?P<pipeline>[^/\s]+)/execution/(?P<execution>[^/\s]+)"
)


class CallbackStatus(StrEnum):
    """The ``status`` a callback message carries."""

    EXECUTING = "Executing"
    STOPPING = "Stopping"


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


def parse_execution_arn(arn: str) -> tuple[str, str, str, str]:
    """
    Split a pipeline execution ARN into ``(region, account_id, pipeline_name, execution_id)``.

    :raises ValueError: if ``arn`` is not a SageMaker pipeline execution ARN.
    """
    match = EXECUTION_ARN_RE.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise ValueError(
            f"not a SageMaker pipeline execution ARN: {short(repr(arn))} "
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
    :param first_received_at: when SQS first returned the message to anyone
        (``ApproximateFirstReceiveTimestamp``, SQS's clock); not part of :meth:`to_dict`.
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
    first_received_at: datetime | None = None

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
        first_received_at: datetime | None = None,
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
            raise fail(MessageDefect.NOT_JSON, f"body is not JSON ({short(str(err))})") from None
        if not isinstance(data, dict):
            raise fail(
                MessageDefect.NOT_CALLBACK,
                f"body is JSON but not an object (got {type(data).__name__}); not a callback message",
            )
        if "token" not in data and "pipelineExecutionArn" not in data:
            keys = ", ".join(sorted(short(str(k), 30) for k in data)[:5]) or "none"
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
                f"callback 'status' must be Executing or Stopping, got {short(raw_status, 40)!r}",
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
            first_received_at=first_received_at,
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


def _timestamp(attributes: Mapping[str, Any], name: str) -> datetime | None:
    """An SQS timestamp attribute (milliseconds since the epoch), ``None`` when absent or unreadable."""
    if name not in attributes:
        return None
    try:
        return datetime.fromtimestamp(int(attributes[name]) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def sqs_metadata(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message id, receipt handle, receive count, sent and first-received times of a ``ReceiveMessage`` item."""
    attributes = message.get("Attributes") or {}
    try:
        receive_count = int(attributes.get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        receive_count = 1
    return {
        "message_id": message.get("MessageId"),
        "receipt_handle": message.get("ReceiptHandle"),
        "receive_count": receive_count,
        "sent_at": _timestamp(attributes, "SentTimestamp"),
        "first_received_at": _timestamp(attributes, "ApproximateFirstReceiveTimestamp"),
    }


@dataclass(frozen=True, slots=True)
class UnparsedMessage:
    """A message on the queue that is not a usable callback; never deleted by this package."""

    message_id: str | None
    receipt_handle: str | None = field(repr=False)
    receive_count: int
    error: InvalidCallbackMessage
    first_received_at: datetime | None = None


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
                        first_received_at=meta["first_received_at"],
                    )
                )
        return received
