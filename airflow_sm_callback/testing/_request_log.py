"""
The request log: every AWS request the emulator served, with exact counts per action.

:class:`~._app.EmulatorApp` records each request once it is answered (service, action, HTTP
status, timings, whether the emulator's own helpers sent it, the fault that answered it, the SQS
queue it named). The
log keeps the last :data:`REQUEST_LOG_LIMIT` records; the counts stay exact beyond that. Served
by the control endpoints ``requests`` and ``request-counts``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Final

__all__ = ["REQUEST_LOG_LIMIT", "RequestLog", "queue_name"]

#: How many request records the log keeps (counts stay exact beyond that).
REQUEST_LOG_LIMIT: Final = 200_000

JSONDict = dict[str, Any]


def queue_name(queue: str | None) -> str | None:
    """A queue's name from its name or URL (``None`` stays ``None``)."""
    if not queue:
        return None
    return queue.rstrip("/").rsplit("/", 1)[-1]


class RequestLog:
    """Thread-safe log of served requests with exact per-action counts."""

    def __init__(self, limit: int = REQUEST_LOG_LIMIT) -> None:
        self._lock = threading.Lock()
        self._records: deque[JSONDict] = deque(maxlen=limit)
        self._counts: Counter[tuple[str, str, bool, str | None]] = Counter()

    def record(
        self,
        service: str,
        action: str,
        status: int,
        *,
        internal: bool,
        started: float,
        fault_id: str | None = None,
        queue: str | None = None,
    ) -> None:
        """Add one record (``queue``: the name of the SQS queue the request named, if any)."""
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
            "queue": queue,
        }
        with self._lock:
            self._records.append(record)
            self._counts[(service, action, internal, queue)] += 1

    def records(
        self, service: str | None, include_internal: bool, queue: str | None = None
    ) -> list[JSONDict]:
        """The kept records, oldest first, filtered (``queue``: a queue's name or URL)."""
        with self._lock:
            snapshot = list(self._records)
        name = queue_name(queue)
        return [
            dict(r)
            for r in snapshot
            if (service is None or r["service"] == service)
            and (include_internal or not r["internal"])
            and (name is None or r["queue"] == name)
        ]

    def counts(self, service: str | None, include_internal: bool, queue: str | None = None) -> dict[str, int]:
        """Requests by action, filtered (``queue``: a queue's name or URL)."""
        result: Counter[str] = Counter()
        with self._lock:
            items = list(self._counts.items())
        name = queue_name(queue)
        for (svc, action, internal, named), n in items:
            if (
                (service is None or svc == service)
                and (include_internal or not internal)
                and (name is None or named == name)
            ):
                result[action] += n
        return dict(result)

    def clear(self) -> int:
        """Forget everything. :return: how many records were dropped."""
        with self._lock:
            count = sum(self._counts.values())
            self._records.clear()
            self._counts.clear()
        return count
