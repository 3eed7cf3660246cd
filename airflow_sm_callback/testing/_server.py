"""
The emulator's HTTP server: moto's server with the SageMaker callback side added.

Layers, outermost first:

1. :class:`EmulatorApp`, a WSGI middleware. It answers the control endpoints under
   ``/_emulator/`` itself, identifies every AWS request (service from the SigV4 credential
   scope, action from ``X-Amz-Target`` or the query ``Action``), answers injected faults before
   moto sees the request, and logs every request with its HTTP status.
2. moto's :class:`~moto.moto_server.werkzeug_app.DomainDispatcherApplication`, with one change:
   the SageMaker Flask app dispatches to :class:`CallbackSageMakerResponse`, a subclass of moto's
   response class that answers the pipeline-execution actions from a :class:`StepEngine`.
   Nothing in moto is patched; other users of moto in the same process are unaffected (but
   for their queues in the emulator's account and region: they too become
   :class:`FastScanQueue`, which behaves the same).
3. moto's backends. SQS stays moto's; callback messages are put on queues through moto's SQS
   backend in-process (they are real messages on the queue but never HTTP requests, so they do
   not show up in the request log). Queues created through this server are moto's queues with
   their message scans made cheap (:class:`FastScanQueue`); they behave the same. moto's state
   is changed by one request at a time (:data:`MOTO_LOCK`), as moto is not thread-safe.

The server keeps connections alive (HTTP/1.1) for plain requests; werkzeug's development server
would close each one.

Only :mod:`.emulator` imports this module, lazily, when a server is started.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, Final, cast
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.core.utils import camelcase_to_underscores, convert_to_flask_response, unix_time_millis
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sagemaker.exceptions import SagemakerClientError
from moto.sagemaker.responses import SageMakerResponse
from moto.sqs.models import Queue, sqs_backends
from werkzeug.serving import BaseWSGIServer, make_server

from ._engine import EngineError, StepEngine

__all__ = [
    "ENGINE_ENVIRON_KEY",
    "INTERNAL_HEADER",
    "CallbackSageMakerResponse",
    "EmulatorApp",
    "EmulatorServer",
    "FastScanQueue",
    "parse_queue_url",
]

#: WSGI environ key under which :class:`EmulatorApp` hands its engine to the SageMaker responses.
ENGINE_ENVIRON_KEY: Final = "airflow_sm_callback.engine"
#: Request header marking a request sent by the emulator's own helpers (logged as internal,
#: never faulted).
INTERNAL_HEADER: Final = "X-Emulator-Internal"
_INTERNAL_ENVIRON: Final = "HTTP_X_EMULATOR_INTERNAL"
CONTROL_PREFIX: Final = "/_emulator/"
#: How many request records the log keeps (counts stay exact beyond that).
REQUEST_LOG_LIMIT: Final = 200_000

_TARGET_PREFIX_SERVICES: Final = {"AmazonSQS": "sqs", "SageMaker": "sagemaker"}
_QUERY_COMPATIBLE_SERVICES: Final = frozenset({"sqs"})
_SQS_HOST_RE: Final = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_LEGACY_SQS_HOST_RE: Final = re.compile(r"^([a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)?$")

JSONDict = dict[str, Any]
StartResponse = Callable[..., Any]


# ---------------------------------------------------------------------- SQS, in-process


def parse_queue_url(queue_url: str, default_region: str) -> tuple[str, str, str]:
    """
    Find account, region and queue name in an SQS queue URL.

    Works for real AWS URLs (``https://sqs.us-east-1.amazonaws.com/123456789012/q``, the legacy
    ``https://queue.amazonaws.com/...`` and ``https://eu-west-1.queue.amazonaws.com/...``) and for
    the emulator's own (``http://127.0.0.1:PORT/123456789012/q``), whose region is
    ``default_region``.

    :param queue_url: the URL.
    :param default_region: region to assume when the host names none.
    :return: ``(account_id, region, queue_name)``.
    :raises ValueError: when the path is not ``/<account>/<name>``.
    """
    parsed = urlsplit(queue_url)
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) != 2 or not parts[0].isdigit():
        raise ValueError(f"not an SQS queue URL: {queue_url!r}")
    host = (parsed.hostname or "").lower()
    match = _SQS_HOST_RE.match(host) or _LEGACY_SQS_HOST_RE.match(host)
    if match:
        region = match.group(1)
    elif host == "queue.amazonaws.com":
        region = "us-east-1"
    else:
        region = default_region
    return parts[0], region, parts[1]


class _SerialLock:
    """
    One lock for moto's state, re-entrant per thread, that a waiting long poll gives up.

    moto's SQS is not thread-safe: under concurrent requests it raised ``Set changed size
    during iteration`` (a 500, with the messages of that receive hidden until their visibility
    ran out) and gave two receives the same receipt handle. Every request that reaches moto,
    and every in-process send, runs under this lock, so moto's state changes one request at a
    time, as the real service's are atomic per request; a long poll gives the lock up while it
    waits for messages (:meth:`FastScanQueue.wait_for_messages`). moto's work holds the GIL
    anyway, so little throughput is lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Goes up each time a thread takes the lock afresh (a new request, a new send).
        self.generation = 0

    def __enter__(self) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._lock.acquire()
            self.generation += 1
        self._local.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            self._lock.release()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Give the lock up (if this thread holds it) for the duration of the block."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = 0
            self._lock.release()
        try:
            yield
        finally:
            if depth:
                self._lock.acquire()
                self._local.depth = depth


#: Serialises moto's state across every emulator in this process (moto's backends are global).
MOTO_LOCK: Final = _SerialLock()


@functools.cache
def _attribute_name(attribute: str) -> str:
    return str(camelcase_to_underscores(attribute))


class FastScanQueue(Queue):
    """
    moto's SQS queue, with the scans of its messages made cheap; it behaves the same.

    moto computes a queue's attributes (three scans of every message, each reading the clock
    once or twice per message at about 10 microseconds a read, and the attribute names
    converted anew) three times for every message it receives and once for every message it
    sends, and lists the visible messages the same way on every receive: with 1,000 messages on
    a queue one ``ReceiveMessage`` of 10 took a second. Here one scan reads the clock once and
    compares the numbers ``Message.visible`` and ``Message.delayed`` compare, and
    :attr:`attributes` counts all three in that one scan. Otherwise :attr:`attributes` is
    moto's (5.2) property, line for line; a test compares the two. A long poll gives up
    :data:`MOTO_LOCK` while it waits.
    """

    @property
    def messages(self) -> list[Any]:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def wait_for_messages(self, timeout: int) -> None:
        # A long poll waiting for messages lets every other request through.
        with MOTO_LOCK.released():
            super().wait_for_messages(timeout)

    def _counts(self) -> dict[str, int]:
        now = unix_time_millis()
        # moto asks for the counts 3 times per message it receives or sends, in one request,
        # and never reads them there: one count per request and millisecond serves them all.
        key = (MOTO_LOCK.generation, int(now), len(self._messages))
        cached = self.__dict__.get("_fast_counts")
        if cached is not None and cached[0] == key:
            return cast("dict[str, int]", cached[1])
        visible = delayed = hidden = 0
        for message in self._messages:
            is_delayed = now < message.delayed_until
            delayed += is_delayed
            if now > message.visible_at:
                visible += not is_delayed
            else:
                hidden += 1
        counts = {
            "ApproximateNumberOfMessages": visible,
            "ApproximateNumberOfMessagesDelayed": delayed,
            "ApproximateNumberOfMessagesNotVisible": hidden,
        }
        self.__dict__["_fast_counts"] = (key, counts)
        return counts

    @property
    def approximate_number_of_messages_delayed(self) -> int:
        return self._counts()["ApproximateNumberOfMessagesDelayed"]

    @property
    def approximate_number_of_messages_not_visible(self) -> int:
        return self._counts()["ApproximateNumberOfMessagesNotVisible"]

    @property
    def attributes(self) -> dict[str, Any]:
        counts = self._counts()
        result: dict[str, Any] = {}
        for attribute in self.BASE_ATTRIBUTES:
            result[attribute] = (
                counts[attribute] if attribute in counts else getattr(self, _attribute_name(attribute))
            )
        if self.fifo_queue:
            for attribute in self.FIFO_ATTRIBUTES:
                result[attribute] = getattr(self, _attribute_name(attribute))
        if self.kms_master_key_id:
            for attribute in self.KMS_ATTRIBUTES:
                result[attribute] = getattr(self, _attribute_name(attribute))
        if self.policy:
            result["Policy"] = self.policy
        if self.redrive_policy:
            result["RedrivePolicy"] = json.dumps(self.redrive_policy)
        for key, value in result.items():
            if isinstance(value, bool):
                result[key] = str(value).lower()
        return result


def fast_scans(queue: Any) -> Any:
    """Make one of moto's queues a :class:`FastScanQueue` (same state, same behaviour)."""
    if type(queue) is Queue:
        queue.__class__ = FastScanQueue
    return queue


def _fast_scan_queues(account_id: str, region: str) -> None:
    """Make every plain queue of one account and region a :class:`FastScanQueue`."""
    backend = sqs_backends[account_id][region]
    for queue in list(backend.queues.values()):
        fast_scans(queue)


def _queue(queue_url: str, default_region: str) -> Any:
    account_id, region, name = parse_queue_url(queue_url, default_region)
    return fast_scans(sqs_backends[account_id][region].get_queue(name))


def send_to_queue(queue_url: str, body: str, default_region: str) -> None:
    """
    Put a message on a queue through moto's SQS backend, as a producer's ``SendMessage`` would.

    :param queue_url: the queue's URL (see :func:`parse_queue_url`).
    :param body: the message body.
    :param default_region: region to assume when the URL names none.
    :raises Exception: when the queue does not exist or is a FIFO queue.
    """
    account_id, region, name = parse_queue_url(queue_url, default_region)
    backend = sqs_backends[account_id][region]
    with MOTO_LOCK:
        queue = fast_scans(backend.get_queue(name))
        if queue.fifo_queue:
            raise ValueError(f"{name} is a FIFO queue; callback steps need a standard queue")
        backend.send_message(name, body)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


def peek_queue(queue_url: str, default_region: str) -> list[JSONDict]:
    """
    Every message currently on a queue, without receiving it.

    Nothing changes: no receive count goes up, no visibility changes. In-flight messages
    (received and not yet deleted, their visibility timeout still running) are included with
    ``"InFlight": true``; delayed ones with ``"Delayed": true``; deleted ones are gone.

    :param queue_url: the queue's URL.
    :param default_region: region to assume when the URL names none.
    :return: one dictionary per message, oldest first.
    """
    with MOTO_LOCK:
        queue = _queue(queue_url, default_region)
        messages = list(queue._messages)
    result: list[JSONDict] = []
    for message in messages:
        attributes: dict[str, str] = {
            "SentTimestamp": str(message.sent_timestamp),
            "ApproximateReceiveCount": str(message.approximate_receive_count),
            "SenderId": str(message.sender_id),
        }
        if message.approximate_first_receive_timestamp:
            attributes["ApproximateFirstReceiveTimestamp"] = str(message.approximate_first_receive_timestamp)
        if message.group_id:
            attributes["MessageGroupId"] = str(message.group_id)
        result.append(
            {
                "MessageId": message.id,
                "Body": message.body,
                "MD5OfBody": message.body_md5,
                "Attributes": attributes,
                "MessageAttributes": _jsonable(message.message_attributes),
                "InFlight": not message.visible,
                "Delayed": message.delayed,
            }
        )
    return result


def purge_queue(queue_url: str, default_region: str) -> int:
    """
    Drop every message on a queue at once (moto's ``PurgeQueue`` allows one purge a minute).

    :param queue_url: the queue's URL.
    :param default_region: region to assume when the URL names none.
    :return: how many messages were dropped.
    """
    with MOTO_LOCK:
        queue = _queue(queue_url, default_region)
        with queue._messages_lock:
            count = len(queue._messages)
            queue._messages = []
            queue._pending_messages = set()
    return count


# ---------------------------------------------------------------------- SageMaker actions


class CallbackSageMakerResponse(SageMakerResponse):
    """
    moto's SageMaker responses plus the callback side, answered by a :class:`StepEngine`.

    ``CreatePipeline`` is moto's, except that the pipeline name in the ARN is lower-cased as
    SageMaker does. The pipeline-execution actions are answered by the engine found in the WSGI
    environ under :data:`ENGINE_ENVIRON_KEY`.
    """

    @property
    def _engine(self) -> StepEngine:
        return cast("StepEngine", self.normalized_request.environ[ENGINE_ENVIRON_KEY])

    @staticmethod
    def _result(call: Callable[[], JSONDict]) -> ActionResult:
        try:
            return ActionResult(call())
        except EngineError as exc:
            raise SagemakerClientError(exc.code, exc.message) from None

    def _pipeline(self, name_or_arn: Any) -> Any:
        if not isinstance(name_or_arn, str) or not name_or_arn:
            raise EngineError("ValidationException", "PipelineName is required")
        pipelines = self.sagemaker_backend.pipelines
        found = pipelines.get(name_or_arn)
        if found is not None:
            return found
        wanted = name_or_arn.lower()
        for pipeline in list(pipelines.values()):
            if wanted in (pipeline.arn.lower(), pipeline.pipeline_name.lower()):
                return pipeline
        raise EngineError("ResourceNotFound", f"Pipeline {name_or_arn} does not exist.")

    def create_pipeline(self) -> ActionResult:
        """``CreatePipeline``: moto's, with SageMaker's lower-cased pipeline ARN."""
        super().create_pipeline()
        pipeline = self.sagemaker_backend.pipelines[self._get_param("PipelineName")]
        prefix, _, rest = pipeline.arn.partition(":pipeline/")
        pipeline.arn = f"{prefix}:pipeline/{rest.lower()}"
        return ActionResult({"PipelineArn": pipeline.arn})

    def start_pipeline_execution(self) -> ActionResult:
        """``StartPipelineExecution``: starts the step engine on the pipeline's definition."""

        def call() -> JSONDict:
            pipeline = self._pipeline(self._get_param("PipelineName"))
            response = self._engine.start_execution(
                account_id=self.current_account,
                region=self.region,
                pipeline_name=pipeline.pipeline_name,
                pipeline_arn=pipeline.arn,
                definition=pipeline.pipeline_definition,
                display_name=self._get_param("PipelineExecutionDisplayName"),
                description=self._get_param("PipelineExecutionDescription"),
                parameters=self._get_param("PipelineParameters"),
                client_request_token=self._get_param("ClientRequestToken"),
            )
            pipeline.last_execution_time = self._engine.describe_execution(response["PipelineExecutionArn"])[
                "CreationTime"
            ]
            return response

        return self._result(call)

    def describe_pipeline_execution(self) -> ActionResult:
        """``DescribePipelineExecution``."""
        return self._result(lambda: self._engine.describe_execution(self._get_param("PipelineExecutionArn")))

    def describe_pipeline_definition_for_execution(self) -> ActionResult:
        """``DescribePipelineDefinitionForExecution``."""
        return self._result(
            lambda: self._engine.definition_for_execution(self._get_param("PipelineExecutionArn"))
        )

    def list_pipeline_parameters_for_execution(self) -> ActionResult:
        """``ListPipelineParametersForExecution`` (one page)."""
        return self._result(
            lambda: self._engine.parameters_for_execution(self._get_param("PipelineExecutionArn"))
        )

    def list_pipeline_execution_steps(self) -> ActionResult:
        """``ListPipelineExecutionSteps``."""
        return self._result(
            lambda: self._engine.list_steps(
                self._get_param("PipelineExecutionArn"),
                max_results=self._get_param("MaxResults"),
                next_token=self._get_param("NextToken"),
                sort_order=self._get_param("SortOrder"),
            )
        )

    def list_pipeline_executions(self) -> ActionResult:
        """``ListPipelineExecutions``."""
        return self._result(
            lambda: self._engine.list_executions(
                self._pipeline(self._get_param("PipelineName")).arn,
                max_results=self._get_param("MaxResults"),
                next_token=self._get_param("NextToken"),
                sort_order=self._get_param("SortOrder"),
                sort_by=self._get_param("SortBy"),
            )
        )

    def send_pipeline_execution_step_success(self) -> ActionResult:
        """``SendPipelineExecutionStepSuccess``."""
        return self._result(
            lambda: self._engine.send_step_success(
                account_id=self.current_account,
                callback_token=self._get_param("CallbackToken"),
                output_parameters=self._get_param("OutputParameters"),
                client_request_token=self._get_param("ClientRequestToken"),
            )
        )

    def send_pipeline_execution_step_failure(self) -> ActionResult:
        """``SendPipelineExecutionStepFailure``."""
        return self._result(
            lambda: self._engine.send_step_failure(
                account_id=self.current_account,
                callback_token=self._get_param("CallbackToken"),
                failure_reason=self._get_param("FailureReason"),
                client_request_token=self._get_param("ClientRequestToken"),
            )
        )

    def stop_pipeline_execution(self) -> ActionResult:
        """``StopPipelineExecution``."""
        return self._result(
            lambda: self._engine.stop_execution(
                account_id=self.current_account,
                arn=self._get_param("PipelineExecutionArn"),
                client_request_token=self._get_param("ClientRequestToken"),
            )
        )


def _create_app(service: Any) -> Any:
    """moto's per-service Flask app, with SageMaker dispatching to the callback responses."""
    app = create_backend_app(service)
    if service == "sagemaker":
        view = convert_to_flask_response(CallbackSageMakerResponse.dispatch)
        for endpoint in list(app.view_functions):
            if endpoint.startswith("SageMakerResponse.dispatch"):
                app.view_functions[endpoint] = view
    return app


# ---------------------------------------------------------------------- request log


class RequestLog:
    """Thread-safe log of served requests with exact per-action counts."""

    def __init__(self, limit: int = REQUEST_LOG_LIMIT) -> None:
        self._lock = threading.Lock()
        self._records: deque[JSONDict] = deque(maxlen=limit)
        self._counts: Counter[tuple[str, str, bool]] = Counter()

    def record(
        self,
        service: str,
        action: str,
        status: int,
        *,
        internal: bool,
        started: float,
        fault_id: str | None = None,
    ) -> None:
        """Add one record."""
        now = time.monotonic()
        record: JSONDict = {
            "service": service,
            "action": action,
            "status": status,
            "time": time.time(),
            "monotonic": now,
            "duration": now - started,
            "internal": internal,
            "fault_id": fault_id,
        }
        with self._lock:
            self._records.append(record)
            self._counts[(service, action, internal)] += 1

    def records(self, service: str | None, include_internal: bool) -> list[JSONDict]:
        """The kept records, oldest first, filtered."""
        with self._lock:
            snapshot = list(self._records)
        return [
            dict(r)
            for r in snapshot
            if (service is None or r["service"] == service) and (include_internal or not r["internal"])
        ]

    def counts(self, service: str | None, include_internal: bool) -> dict[str, int]:
        """Requests by action, filtered."""
        result: Counter[str] = Counter()
        with self._lock:
            items = list(self._counts.items())
        for (svc, action, internal), n in items:
            if (service is None or svc == service) and (include_internal or not internal):
                result[action] += n
        return dict(result)

    def clear(self) -> int:
        """Forget everything. :return: how many records were dropped."""
        with self._lock:
            count = sum(self._counts.values())
            self._records.clear()
            self._counts.clear()
        return count


# ---------------------------------------------------------------------- faults


class _Fault:
    __slots__ = (
        "action",
        "code",
        "expires_at",
        "fault_id",
        "hits",
        "http_status",
        "message",
        "probability",
        "remaining",
        "service",
    )

    def __init__(self, spec: Mapping[str, Any]) -> None:
        allowed = {"service", "action", "code", "http_status", "count", "seconds", "probability", "message"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        service = spec.get("service")
        if not isinstance(service, str) or not service:
            raise ValueError("service is required (e.g. 'sqs', 'sagemaker' or '*')")
        self.fault_id = uuid.uuid4().hex[:12]
        self.service = service
        self.action = str(spec.get("action") or "*")
        self.code = str(spec.get("code") or "ThrottlingException")
        status = spec.get("http_status", 400)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("http_status must be an integer between 400 and 599")
        self.http_status = status
        count = spec.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer or null")
        self.remaining: int | None = count
        seconds = spec.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)):
            raise ValueError("seconds must be a number or null")
        self.expires_at: float | None = None if seconds is None else time.monotonic() + float(seconds)
        probability = spec.get("probability", 1.0)
        if (
            isinstance(probability, bool)
            or not isinstance(probability, int | float)
            or not 0 <= probability <= 1
        ):
            raise ValueError("probability must be between 0 and 1")
        self.probability = float(probability)
        self.message = str(spec.get("message") or f"Injected fault: {self.code}")
        self.hits = 0

    def as_dict(self) -> JSONDict:
        return {
            "fault_id": self.fault_id,
            "service": self.service,
            "action": self.action,
            "code": self.code,
            "http_status": self.http_status,
            "remaining": self.remaining,
            "seconds_left": None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic()),
            "probability": self.probability,
            "message": self.message,
            "hits": self.hits,
        }


class FaultRegistry:
    """Injected faults, matched by service and action, first match wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._random = random.Random()

    def add(self, spec: Mapping[str, Any]) -> str:
        """Add a fault. :return: its id. :raises ValueError: for a bad field."""
        fault = _Fault(spec)
        with self._lock:
            self._faults.append(fault)
        return fault.fault_id

    def remove(self, fault_id: str) -> bool:
        """Remove one fault. :return: whether it existed."""
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.fault_id != fault_id]
            return len(self._faults) != before

    def clear(self) -> int:
        """Remove every fault. :return: how many there were."""
        with self._lock:
            count = len(self._faults)
            self._faults = []
        return count

    def list(self) -> list[JSONDict]:
        """The active faults."""
        with self._lock:
            self._expire()
            return [f.as_dict() for f in self._faults]

    def _expire(self) -> None:
        now = time.monotonic()
        self._faults = [
            f
            for f in self._faults
            if (f.remaining is None or f.remaining > 0) and (f.expires_at is None or f.expires_at > now)
        ]

    def match(self, service: str, action: str) -> _Fault | None:
        """The fault that answers this request, if any (its count goes down)."""
        if not self._faults:
            return None
        with self._lock:
            self._expire()
            for fault in self._faults:
                if fault.service not in ("*", service) or fault.action not in ("*", action):
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                fault.hits += 1
                return fault
        return None


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _fault_response(
    fault: _Fault, service: str, environ: Mapping[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error response botocore parses to exactly ``fault.code``, in the request's protocol."""
    request_id = str(uuid.uuid4())
    content_type = str(environ.get("CONTENT_TYPE") or "")
    headers: list[tuple[str, str]] = [("x-amzn-RequestId", request_id)]
    if environ.get("HTTP_X_AMZ_TARGET") or "json" in content_type:
        body = json.dumps({"__type": fault.code, "message": fault.message}).encode()
        headers.append(
            ("Content-Type", content_type if "amz-json" in content_type else "application/x-amz-json-1.1")
        )
        headers.append(("x-amzn-ErrorType", fault.code))
        if service in _QUERY_COMPATIBLE_SERVICES:
            fault_type = "Sender" if fault.http_status < 500 else "Receiver"
            headers.append(("x-amzn-query-error", f"{fault.code};{fault_type}"))
    elif content_type.startswith("application/x-www-form-urlencoded"):
        fault_type = "Sender" if fault.http_status < 500 else "Receiver"
        body = (
            '<?xml version="1.0"?><ErrorResponse><Error>'
            f"<Type>{fault_type}</Type><Code>{escape(fault.code)}</Code>"
            f"<Message>{escape(fault.message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    else:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Error>'
            f"<Code>{escape(fault.code)}</Code><Message>{escape(fault.message)}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
        headers.append(("Content-Type", "application/xml"))
    headers.append(("Content-Length", str(len(body))))
    return _status_line(fault.http_status), headers, body


# ---------------------------------------------------------------------- the WSGI app


def identify_request(environ: dict[str, Any]) -> tuple[str, str]:
    """
    Which service and action a request is for, cheaply.

    The service comes from the SigV4 credential scope (``Credential=AK/date/region/SERVICE/...``)
    or the ``X-Amz-Target`` prefix; the action from ``X-Amz-Target`` (JSON protocols, SQS
    included), the query string's ``Action`` or a form-encoded body's ``Action`` (the body is
    put back for moto). Anything else is named ``"<METHOD> <path>"``.

    :param environ: the WSGI environ.
    :return: ``(service, action)``.
    """
    service = ""
    auth = environ.get("HTTP_AUTHORIZATION") or ""
    position = auth.find("Credential=")
    if position >= 0:
        scope = auth[position + 11 :].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3].lower()
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        prefix, _, action = target.rpartition(".")
        if not service:
            service = _TARGET_PREFIX_SERVICES.get(prefix, prefix.split("_")[0].lower())
        return service or "unknown", action
    query = environ.get("QUERY_STRING") or ""
    if "Action=" in query:
        actions = parse_qs(query).get("Action")
        if actions:
            return service or "unknown", actions[0]
    content_type = environ.get("CONTENT_TYPE") or ""
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length:
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            actions = parse_qs(body.decode("utf-8", "replace")).get("Action")
            if actions:
                return service or "unknown", actions[0]
    return service or "unknown", f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('PATH_INFO', '/')}"


def request_region(environ: Mapping[str, Any], default: str) -> str:
    """The region of a SigV4-signed request (from its credential scope), else ``default``."""
    auth = str(environ.get("HTTP_AUTHORIZATION") or "")
    position = auth.find("Credential=")
    if position >= 0:
        scope = auth[position + 11 :].split(",", 1)[0].split("/")
        if len(scope) >= 4 and scope[2]:
            return scope[2]
    return default


class EmulatorApp:
    """
    The WSGI application: control endpoints, fault injection and the request log around moto.

    :param engine: the step engine the SageMaker responses use.
    :param region: the emulator's default region (for queue URLs that name none).
    :param account_id: the account reported by ``/_emulator/health``.
    """

    def __init__(self, engine: StepEngine, region: str, account_id: str = DEFAULT_ACCOUNT_ID) -> None:
        self.engine = engine
        self.region = region
        self.account_id = account_id
        self.log = RequestLog()
        self.faults = FaultRegistry()
        self._moto = DomainDispatcherApplication(_create_app)
        self._apps: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, path[len(CONTROL_PREFIX) :])
        started = time.monotonic()
        service, action = identify_request(environ)
        internal = environ.get(_INTERNAL_ENVIRON) == "1"
        if not internal:
            fault = self.faults.match(service, action)
            if fault is not None:
                status_line, headers, body = _fault_response(fault, service, environ)
                start_response(status_line, headers)
                self.log.record(
                    service,
                    action,
                    fault.http_status,
                    internal=False,
                    started=started,
                    fault_id=fault.fault_id,
                )
                return [body]
        environ[ENGINE_ENVIRON_KEY] = self.engine
        statuses: list[int] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        region = request_region(environ, self.region)
        # SageMaker requests take the step engine's lock, and the engine takes MOTO_LOCK to send
        # a callback message: they must not hold MOTO_LOCK first (the lock order is engine, moto).
        serial = contextlib.nullcontext() if service == "sagemaker" else MOTO_LOCK
        try:
            with serial:
                if service == "sqs":
                    # Queues made elsewhere (moto in this process) get the cheap scans and the
                    # long poll that gives the lock up, before this request touches them.
                    _fast_scan_queues(self.account_id, region)
                result = self._backend_app(environ, service)(environ, capture)
                if service == "sqs" and action == "CreateQueue":
                    _fast_scan_queues(self.account_id, region)
        except Exception:
            self.log.record(service, action, 500, internal=internal, started=started)
            raise
        status = statuses[-1] if statuses else 0
        self.log.record(service, action, status, internal=internal, started=started)
        return cast("Iterable[bytes]", result)

    def _backend_app(self, environ: dict[str, Any], service: str) -> Any:
        """
        The moto app that answers a request: for SQS and SageMaker's API, found once and kept.

        moto's dispatcher finds the app for every request under one process-wide lock, listing
        moto's package directory each time (a ``stat`` per service); under load that lock
        serialises every request. Signed SQS and SageMaker API requests always go to the same
        app, so it is looked up once.
        """
        path = str(environ.get("PATH_INFO") or "")
        direct = service == "sqs" or (
            service == "sagemaker" and not path.endswith(("invocations", "BatchPutMetrics"))
        )
        if not direct or "Credential=" not in str(environ.get("HTTP_AUTHORIZATION") or ""):
            return self._moto.get_application(environ)
        app = self._apps.get(service)
        if app is None:
            app = self._apps[service] = self._moto.get_application(environ)
        return app

    # ------------------------------------------------------------------ control endpoints

    def _control(self, environ: dict[str, Any], start_response: StartResponse, route: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING") or "").items()}
        try:
            body = self._json_body(environ)
            status, payload = self._route(method, route.strip("/"), query, body)
        except EngineError as exc:
            status, payload = 400, {"error": exc.message, "code": exc.code}
        except (ValueError, KeyError, TypeError) as exc:
            status, payload = 400, {"error": str(exc), "code": "BadRequest"}
        except Exception as exc:
            status, payload = 400, {"error": f"{type(exc).__name__}: {exc}", "code": type(exc).__name__}
        data = json.dumps(payload, default=str).encode()
        start_response(
            _status_line(status),
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    @staticmethod
    def _json_body(environ: dict[str, Any]) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not length:
            return None
        return json.loads(environ["wsgi.input"].read(length) or b"null")

    def _route(self, method: str, route: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        include_internal = query.get("include_internal", "").lower() in ("1", "true")
        service = query.get("service") or None
        if route == "health" and method == "GET":
            return 200, {"status": "ok", "region": self.region, "account_id": self.account_id}
        if route == "requests":
            if method == "GET":
                return 200, {"requests": self.log.records(service, include_internal)}
            if method == "DELETE":
                return 200, {"cleared": self.log.clear()}
        if route == "request-counts" and method == "GET":
            return 200, {"counts": self.log.counts(service, include_internal)}
        if route == "faults":
            if method == "GET":
                return 200, {"faults": self.faults.list()}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("a JSON object describing the fault is required")
                return 200, {"fault_id": self.faults.add(body)}
            if method == "DELETE":
                return 200, {"cleared": self.faults.clear()}
        if route.startswith("faults/") and method == "DELETE":
            return 200, {"removed": self.faults.remove(route[len("faults/") :])}
        if route == "settings":
            if method == "GET":
                return 200, {"settings": self.engine.settings.as_dict()}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("a JSON object of settings is required")
                return 200, {"settings": self.engine.configure(body).as_dict()}
            if method == "DELETE":
                return 200, {"settings": self.engine.reset_settings().as_dict()}
        if route == "accepted-closes" and method == "GET":
            return 200, {"accepted_closes": self.engine.accepted_closes()}
        if route == "queue-messages" and method == "GET":
            return 200, {"messages": peek_queue(query["queue_url"], self.region)}
        if route == "purge-queue" and method == "POST":
            if not isinstance(body, dict):
                raise ValueError('{"queue_url": ...} is required')
            return 200, {"purged": purge_queue(str(body["queue_url"]), self.region)}
        if route == "reset" and method == "POST":
            self.faults.clear()
            self.log.clear()
            return 200, {"settings": self.engine.reset_settings().as_dict()}
        return 404, {"error": f"no control endpoint {method} /_emulator/{route}", "code": "NotFound"}


# ---------------------------------------------------------------------- the server


#: Response headers the keep-alive handler sets itself (hop-by-hop, or the body's length).
_HOP_HEADERS: Final = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class _QuietRequestHandler(MotoRequestHandler):
    """
    moto's request handler, keeping connections alive and without a log line per request.

    werkzeug's development server closes the connection after every response, so every request
    costs a new connection and a new thread, and under load each new thread waits for the GIL
    before the server accepts the next connection. Here a plain HTTP/1.1 request (a body of
    known length, no ``Expect``, not ``HEAD``) is answered with the whole response and a
    ``Content-Length`` and the connection stays open for the client's next request; anything
    else goes through werkzeug unchanged (and closes).
    """

    protocol_version = "HTTP/1.1"
    # Small responses on a kept-alive connection: without this, delayed ACKs can add 40 ms.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        connections = getattr(self.server, "emulator_connections", None)
        if connections is not None:
            connections.add(self.connection)

    def finish(self) -> None:
        connections = getattr(self.server, "emulator_connections", None)
        if connections is not None:
            connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None

    def _can_keep_alive(self) -> bool:
        return (
            self.request_version == "HTTP/1.1"
            and self.command != "HEAD"
            and not self.headers.get("Expect")
            and "chunked" not in self.headers.get("Transfer-Encoding", "").lower()
        )

    def run_wsgi(self) -> None:
        if not self._can_keep_alive():
            self.close_connection = True
            super().run_wsgi()
            return
        environ = self.make_environ()
        self.environ = environ
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # Read exactly the body, so that the next request on this connection starts clean.
        environ["wsgi.input"] = io.BytesIO(self.rfile.read(length) if length > 0 else b"")
        response: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response["status"], response["headers"] = status, headers
            return written.append

        try:
            result = self.server.app(environ, start_response)
            try:
                body = b"".join([*written, *result])
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            code_text, _, reason = str(response["status"]).partition(" ")
            code = int(code_text)
        except Exception as err:
            self.close_connection = True
            self.server.log("error", f"Error on request {self.command} {self.path}: {err!r}")
            code, reason, body = 500, "Internal Server Error", b"Internal Server Error"
            response["headers"] = [("Content-Type", "text/plain")]
        headers: list[tuple[str, str]] = response["headers"]
        names = {key.lower() for key, _ in headers}
        self.send_response_only(code, reason)
        # The app's own Server header (moto's) stands; one of each, or strict clients refuse it.
        if "server" not in names:
            self.send_header("Server", self.version_string())
        if "date" not in names:
            self.send_header("Date", self.date_time_string())
        for key, value in headers:
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        no_body = code in (204, 304) or 100 <= code < 200
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: one system call (one release of the GIL) a response.
        self._headers_buffer.append(b"\r\n" + (b"" if no_body else body))
        self.flush_headers()
        self.wfile.flush()


class EmulatorServer:
    """
    The threaded HTTP server running :class:`EmulatorApp` on a background thread.

    :param host: address to bind.
    :param port: port to bind; ``0`` picks a free one.
    :param region: the emulator's default region.
    :param engine: the step engine (a fresh one putting messages on moto's SQS when omitted).
    """

    def __init__(self, host: str, port: int, region: str, engine: StepEngine | None = None) -> None:
        self.engine = engine or StepEngine(send_to_queue)
        self.app = EmulatorApp(self.engine, region)
        self._server: BaseWSGIServer = make_server(
            host, port, self.app, threaded=True, request_handler=_QuietRequestHandler
        )
        # Connections kept alive; closed on stop so that no client is served by a stopped server.
        self._server.emulator_connections = set()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"callback-emulator-{self.port}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve on the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and cancel the engine's timers."""
        self.engine.shutdown()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._server.emulator_connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
