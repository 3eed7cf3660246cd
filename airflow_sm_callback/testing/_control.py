"""
The emulator's control endpoints, seen from a client: request log, faults, settings, queue peeks.

:class:`ControlEndpoints` is the part of :class:`~.emulator.CallbackEmulator` that talks to the
JSON endpoints under ``/_emulator/`` (served by :mod:`._app`) with the standard library's
``urllib``, so that a handle to an emulator in another process works exactly like the one that
started it. :class:`RequestRecord` is one entry of the request log; :class:`EmulatorError` is
what a refused or unreachable control endpoint raises.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypedDict
from urllib.parse import urlencode

__all__ = ["ControlEndpoints", "EmulatorError", "RequestRecord"]


class EmulatorError(RuntimeError):
    """A control endpoint refused a request, or the emulator is not reachable."""


class RequestRecord(TypedDict):
    """One AWS request the emulator served."""

    #: Signing name of the service: ``sqs``, ``sagemaker``, ...
    service: str
    #: ``ReceiveMessage``, ``SendPipelineExecutionStepSuccess``, ... (``"GET /path"`` for REST).
    action: str
    #: HTTP status answered.
    status: int
    #: Epoch seconds when the answer was ready.
    time: float
    #: :func:`time.monotonic` of the server process at the same moment.
    monotonic: float
    #: Seconds spent answering.
    duration: float
    #: Sent by the emulator's own helpers (``create_queue`` ...), not by the code under test.
    internal: bool
    #: The injected fault that answered it, if any.
    fault_id: str | None
    #: The name of the SQS queue it named (``QueueUrl``, or ``QueueName`` to create one), if any.
    queue: str | None


class ControlEndpoints:
    """
    Request log, faults, settings and queue peeks of a running emulator, over HTTP.

    :attr:`endpoint_url` is set by the subclass once the emulator runs.
    """

    def __init__(self) -> None:
        self._endpoint_url: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``. :raises EmulatorError: before :meth:`start`."""
        if self._endpoint_url is None:
            raise EmulatorError("the emulator is not running; call start() first")
        return self._endpoint_url

    def _control(
        self,
        method: str,
        route: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Any:
        url = f"{self.endpoint_url}/_emulator/{route}"
        if query:
            url = f"{url}?{urlencode(query)}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = json.loads(payload).get("error", payload.decode())
            except ValueError:
                message = payload.decode(errors="replace")
            raise EmulatorError(f"{method} /_emulator/{route}: {message}") from None
        except urllib.error.URLError as exc:
            raise EmulatorError(f"no emulator at {self.endpoint_url}: {exc.reason}") from None

    # ------------------------------------------------------------------ request log

    def requests(
        self, service: str | None = None, *, include_internal: bool = False, queue: str | None = None
    ) -> list[RequestRecord]:
        """
        The AWS requests served so far, oldest first (the last 200 000 are kept).

        :param service: only this service (``"sqs"``, ``"sagemaker"``...).
        :param include_internal: include the requests of this class's own helpers.
        :param queue: only the SQS requests that name this queue (its URL or name).
        :return: the records.
        """
        query = self._request_query(service, include_internal, queue)
        records: list[RequestRecord] = self._control("GET", "requests", query=query)["requests"]
        return records

    def request_counts(
        self, service: str | None = None, *, include_internal: bool = False, queue: str | None = None
    ) -> Counter[str]:
        """
        How many requests were served, by action (exact, however many).

        A request is logged once answered: a long poll that a client gave up on (its task
        cancelled, its process ended) is counted when the emulator ends it, up to 20 s later.
        Tests that share an emulator count one queue's requests with ``queue``.

        :param service: only this service.
        :param include_internal: include the requests of this class's own helpers.
        :param queue: only the SQS requests that name this queue (its URL or name).
        :return: action to count.
        """
        query = self._request_query(service, include_internal, queue)
        return Counter(self._control("GET", "request-counts", query=query)["counts"])

    @staticmethod
    def _request_query(service: str | None, include_internal: bool, queue: str | None) -> dict[str, str]:
        query = {"include_internal": "1" if include_internal else "0"}
        if service:
            query["service"] = service
        if queue:
            query["queue"] = queue
        return query

    def clear_requests(self) -> None:
        """Forget the request log."""
        self._control("DELETE", "requests")

    # ------------------------------------------------------------------ faults

    def inject_fault(
        self,
        service: str,
        action: str = "*",
        code: str = "ThrottlingException",
        http_status: int = 400,
        count: int | None = None,
        seconds: float | None = None,
        probability: float = 1.0,
        message: str | None = None,
    ) -> str:
        """
        Answer matching requests with an error before they reach moto (nothing changes).

        The body is in the request's protocol (JSON with ``__type`` and, for SQS, the
        ``x-amzn-query-error`` header; XML for query requests), so botocore reports exactly
        ``code``. Faults match in the order they were added; helper requests are never faulted.

        :param service: ``"sqs"``, ``"sagemaker"``, ... or ``"*"``.
        :param action: the action name or ``"*"``.
        :param code: the error code botocore will report.
        :param http_status: 400..599.
        :param count: answer this many requests, then disappear (``None``: unlimited).
        :param seconds: disappear after this long (``None``: never).
        :param probability: chance that a matching request is faulted.
        :param message: the error message.
        :return: the fault's id.
        """
        spec: dict[str, Any] = {
            "service": service,
            "action": action,
            "code": code,
            "http_status": http_status,
            "count": count,
            "seconds": seconds,
            "probability": probability,
        }
        if message is not None:
            spec["message"] = message
        return str(self._control("POST", "faults", spec)["fault_id"])

    def remove_fault(self, fault_id: str) -> bool:
        """Remove one fault. :return: whether it was still active."""
        return bool(self._control("DELETE", f"faults/{fault_id}")["removed"])

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._control("DELETE", "faults")

    def faults(self) -> list[dict[str, Any]]:
        """The active faults, with how often each fired (``hits``)."""
        faults: list[dict[str, Any]] = self._control("GET", "faults")["faults"]
        return faults

    # ------------------------------------------------------------------ settings

    def configure(self, **settings: Any) -> dict[str, Any]:
        """
        Change step-engine settings (see the module docstring); the others stay.

        :param settings: setting name to value.
        :return: all settings now in force.
        :raises EmulatorError: for an unknown setting or a wrong type.
        """
        result: dict[str, Any] = self._control("POST", "settings", settings)["settings"]
        return result

    def settings(self) -> dict[str, Any]:
        """:return: all settings now in force."""
        result: dict[str, Any] = self._control("GET", "settings")["settings"]
        return result

    def accepted_closes(self) -> dict[str, int]:
        """
        Close requests the emulator accepted, per callback token (replays of the same request
        not counted): a token with more than one was closed twice.
        """
        result: dict[str, int] = self._control("GET", "accepted-closes")["accepted_closes"]
        return result

    def reset(self) -> None:
        """Default settings, no faults, empty request log (queues and executions stay)."""
        self._control("POST", "reset")

    # ------------------------------------------------------------------ queues

    def queue_messages(self, queue_url: str) -> list[dict[str, Any]]:
        """
        Peek at every message on a queue without consuming it.

        Receive counts and visibility do not change. In-flight messages (received, not deleted,
        visibility timeout running) are included with ``"InFlight": True``, delayed ones with
        ``"Delayed": True``. Each message has ``MessageId``, ``Body``, ``MD5OfBody``,
        ``Attributes`` (``SentTimestamp``, ``ApproximateReceiveCount``...) and
        ``MessageAttributes``.

        :param queue_url: the queue.
        :return: the messages, oldest first.
        """
        messages: list[dict[str, Any]] = self._control(
            "GET", "queue-messages", query={"queue_url": queue_url}
        )["messages"]
        return messages

    def purge_queue(self, queue_url: str) -> int:
        """
        Drop every message on a queue now (no once-a-minute limit, unlike ``PurgeQueue``).

        :param queue_url: the queue.
        :return: how many messages were dropped.
        """
        return int(self._control("POST", "purge-queue", {"queue_url": queue_url})["purged"])
