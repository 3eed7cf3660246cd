"""
The one lock around moto's state (:data:`MOTO_LOCK`), re-entrant per thread, given up by a long poll.

moto's SQS is not thread-safe: under concurrent requests it raised ``Set changed size during
iteration`` (a 500, with the messages of that receive hidden until their visibility ran out)
and gave two receives the same receipt handle. Every request that reaches moto, and every
in-process send, runs under this lock, so moto's state changes one request at a time, as the
real service's are atomic per request; a long poll gives the lock up while it waits for
messages (:meth:`._moto.FastScanQueue.wait_for_messages`). moto's work holds the GIL anyway, so
little throughput is lost.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Final

__all__ = ["MOTO_LOCK", "SerialLock"]


class SerialLock:
    """A lock, re-entrant per thread, that the holding thread can give up for a while."""

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
MOTO_LOCK: Final = SerialLock()
