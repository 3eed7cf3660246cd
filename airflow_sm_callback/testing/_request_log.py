"""
The request log: every AWS request the emulator served, with exact counts per action.

:class:`~._app.EmulatorApp` records each request once it is answered (service, action, HTTP
status, timings, whether the emulator's own helpers sent it, the fault that answered it). The
log keeps the last :data:`REQUEST_LOG_LIMIT` records; the counts stay exact beyond that. Served
by the control endpoints ``requests`` and ``request-counts``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Final

__all__ = ["REQUEST_LOG_LIMIT", "RequestLog"]

#: How many request records the log keeps (counts stay exact beyond that).
REQUEST_LOG_LIMIT: Final = 200_000

JSONDict = dict[str, Any]


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
