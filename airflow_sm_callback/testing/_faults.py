"""
Fault injection: injected errors that answer matching requests before moto sees them.

:class:`FaultRegistry` keeps the faults (service and action or ``"*"``, first match wins, with
a count, a lifetime and a probability); :func:`fault_response` writes the error in the
request's protocol so that botocore reports exactly the fault's code: JSON with ``__type`` (and,
for SQS, the ``x-amzn-query-error`` header botocore reads for query-compatible services) or an
XML ``ErrorResponse`` for query requests. Served by the control endpoints under ``faults``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final
from xml.sax.saxutils import escape

__all__ = ["Fault", "FaultRegistry", "fault_response", "status_line"]

_QUERY_COMPATIBLE_SERVICES: Final = frozenset({"sqs"})

JSONDict = dict[str, Any]


class Fault:
    """One injected fault, from its JSON description (see :meth:`FaultRegistry.add`)."""

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
        """:return: the fault as ``faults()`` shows it."""
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
        self._faults: list[Fault] = []
        self._random = random.Random()

    def add(self, spec: Mapping[str, Any]) -> str:
        """Add a fault. :return: its id. :raises ValueError: for a bad field."""
        fault = Fault(spec)
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

    def match(self, service: str, action: str) -> Fault | None:
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


def status_line(status: int) -> str:
    """:return: ``"<status> <reason phrase>"``."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def fault_response(
    fault: Fault, service: str, environ: Mapping[str, Any]
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
    return status_line(fault.http_status), headers, body
