"""
QueueWrites: a shared stream's deletes and visibility changes, grouped into as few batch requests as they allow.

A triggerer on a queue that other triggerers share hands most of what it receives back at once,
a few messages a receive: one ``ChangeMessageVisibilityBatch`` for each would cost a request per
receive. Here the writes are sent one group at a time, in order; what is decided while a group's
requests are under way goes into the next group (a group commit: no write waits longer than the
requests before it, and none is sent alone when others are ready). Within a group, a delete wins
over a visibility change of the same message, and a later change over an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from airflow_sm_callback.hooks._operations import SQS_BATCH_SIZE
from airflow_sm_callback.hooks.errors import describe_error

if TYPE_CHECKING:
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

__all__ = ["QueueWrites"]

log = logging.getLogger(__name__)


class QueueWrites:
    """
    The deletes and visibility changes of one stream, sent in groups, one group at a time.

    :param hook: gives the hook the requests are made with.
    :param queue_url: the queue.
    """

    def __init__(self, hook: Callable[[], SageMakerCallbackHook], queue_url: str) -> None:
        self._hook = hook
        self._queue_url = queue_url
        self._deletes: dict[str, None] = {}
        self._changes: dict[str, int] = {}
        #: Done once the group being gathered has been sent.
        self._sent: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        #: Groups sent (a group is one request per ten of its writes).
        self.groups = 0

    async def write(self, deletes: Iterable[str] = (), changes: Iterable[tuple[str, int]] = ()) -> None:
        """
        Delete ``deletes`` and set the visibility of ``changes`` (receipt handle, seconds); return
        once they were sent. A failure is logged, not raised: a message not deleted comes back
        when its visibility runs out, and one not handed back comes back then too.
        """
        for handle in deletes:
            self._deletes[handle] = None
            self._changes.pop(handle, None)
        for handle, seconds in changes:
            if handle not in self._deletes:
                self._changes[handle] = seconds  # the latest change of a message wins
        if not self._deletes and not self._changes:
            return
        loop = asyncio.get_running_loop()
        if self._sent is None:
            self._sent = loop.create_future()
        sent = self._sent
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send())
        await asyncio.shield(sent)

    async def _send(self) -> None:
        while self._sent is not None:
            deletes, changes, sent = list(self._deletes), list(self._changes.items()), self._sent
            self._deletes, self._changes, self._sent = {}, {}, None
            try:
                await self._request(deletes, changes)
            finally:
                if not sent.done():
                    sent.set_result(None)

    async def _request(self, deletes: list[str], changes: list[tuple[str, int]]) -> None:
        """One group: its requests (ten writes each) at once; deletes and changes touch no message twice."""
        hook = self._hook()
        self.groups += 1
        size = SQS_BATCH_SIZE
        outcomes = await asyncio.gather(
            *(
                hook.adelete_messages(self._queue_url, deletes[i : i + size])
                for i in range(0, len(deletes), size)
            ),
            *(
                hook.achange_visibility(self._queue_url, changes[i : i + size])
                for i in range(0, len(changes), size)
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                # Nothing is lost: what was not deleted or handed back comes back when its
                # visibility runs out.
                log.warning("Writing to %s failed: %s", self._queue_url, describe_error(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome

    async def aclose(self) -> None:
        """Wait for what was written to be sent."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
