"""
Shared polls below Airflow 3.3: the provider's own stand-in for Airflow's shared-stream manager.

Airflow 3.3 lets the triggers of one queue and connection in a triggerer share one poll loop
(``airflow.triggers.shared_stream``, ack mode). Airflow 3.0 to 3.2 have no such mechanism: each
trigger's ``run()`` would poll on its own, a thousand pollers for a thousand waits. So there
:meth:`SageMakerCallbackTrigger.run <airflow_sm_callback.triggers.callback.SageMakerCallbackTrigger.run>`
subscribes to a :class:`LocalStream` of this process instead, which drives the same producer
(:class:`~.stream.CallbackStreamProducer`) and feeds the same filter as Airflow's manager does:
each batch goes to every subscriber, and once each of them has moved past it (pulled the next
batch, or left) the producer advances it.

What differs is durability: Airflow below 3.3 tells a trigger nothing of its event's persist.
So a claim is never deleted on the word of its event alone: a task's claimed messages are held
for its ``handoff_visibility`` (deleted once the task instance succeeded, by the confirmer, or
by the task), and an ``AssetWatcher``'s too: they are deleted when they come back after that
hold, the watcher's token being recorded as handed on (by then the asset event has long been
persisted; should the triggerer die first, the callback is delivered again: at least once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

from airflow_sm_callback import _airflow
from airflow_sm_callback.triggers import _process
from airflow_sm_callback.triggers.stream import CallbackStreamProducer

__all__ = ["LocalStream", "streams", "subscribe", "wait_closed"]

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """How the subscribers resolved a batch (the shape of Airflow 3.3's ``AdvanceOutcome``)."""

    acked: int
    failed: int = 0
    rejected: int = 0

    @property
    def is_clean(self) -> bool:
        return self.failed == 0 and self.rejected == 0 and self.acked > 0


class Item(NamedTuple):
    """One resolved batch (the shape of Airflow 3.3's ``AdvanceItem``)."""

    broker_payload: Any
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class LocalStream:
    """
    One poll loop of a queue and connection in this process, for every trigger subscribed to it.

    It is kept in the stream's :class:`~._process.StreamState` (the process's one place for
    what outlives a trigger) from its first subscriber until it has closed after its last.
    """

    def __init__(self, state: _process.StreamState, kwargs: dict[str, Any]) -> None:
        self.state = state
        self.producer = CallbackStreamProducer(kwargs, persist_confirmed=False)
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        #: Batch id: the subscribers that have not moved past it yet.
        self._pending: dict[int, set[int]] = {}
        self._acked: dict[int, int] = {}
        self._advances: asyncio.Queue[int | None] = asyncio.Queue()
        # The poll of every trigger here: logged to the triggerer, not to the first subscriber.
        self._pump = asyncio.create_task(
            self._run(), name="sagemaker-callback-local-stream", context=_airflow.process_context()
        )
        self._advancer = asyncio.create_task(
            self._advance_loop(), name="sagemaker-callback-local-advance", context=_airflow.process_context()
        )
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    async def _run(self) -> None:
        error: BaseException | None = None
        try:
            async for raw, payload in self.producer.open_stream():
                subscribers = set(self._queues)
                self._pending[payload] = subscribers
                self._acked[payload] = 0
                if not subscribers:
                    self._advances.put_nowait(payload)
                for queue in self._queues.values():
                    queue.put_nowait(raw)
            error = RuntimeError("the shared poll ended")
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            error = err
            log.warning("The shared poll of %s ended: %s", self.producer.queue_url, err)
        finally:
            for queue in list(self._queues.values()):
                queue.put_nowait(_End(error))
            self._retire()

    def _resolve(self, batch_id: int, subscriber: int) -> None:
        pending = self._pending.get(batch_id)
        if pending is None or subscriber not in pending:
            return
        pending.discard(subscriber)
        self._acked[batch_id] += 1
        if not pending:
            self._advances.put_nowait(batch_id)

    async def _advance_loop(self) -> None:
        while True:
            batch_id = await self._advances.get()
            if batch_id is None:
                return
            self._pending.pop(batch_id, None)
            outcome = Outcome(acked=self._acked.pop(batch_id, 0))
            try:
                await self.producer.advance([Item(batch_id, outcome)])
            except Exception as err:
                log.warning("Advancing a batch of %s failed: %s", self.producer.queue_url, err)

    def subscribe(self, subscriber: int) -> AsyncIterator[Any]:
        """The batches of the stream from now on, for ``subscriber`` (its filter's input)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[subscriber] = queue  # now: a batch broadcast before the first pull is not missed
        return self._feed(subscriber, queue)

    async def _feed(self, subscriber: int, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
                # Asked for the next batch: it has moved past this one (as Airflow's manager
                # resolves a subscriber's event).
                self._resolve(item.id, subscriber)
        finally:
            self._leave(subscriber)

    def _leave(self, subscriber: int) -> None:
        self._queues.pop(subscriber, None)
        for batch_id in [b for b, pending in self._pending.items() if subscriber in pending]:
            self._resolve(batch_id, subscriber)
        if not self._queues and not self.closed:
            self.closed = True
            self._retire()
            closing = self.state.closing = asyncio.get_running_loop().create_task(
                self.aclose(), name="sagemaker-callback-local-close"
            )
            closing.add_done_callback(lambda _: _process.settle(self.state))

    def _retire(self) -> None:
        if self.state.local is self:
            self.state.local = None

    async def aclose(self) -> None:
        """Stop the poll (its last subscriber left): what was never advanced goes back to the queue."""
        self.closed = True
        self._retire()
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        # Advance what every subscriber has moved past; the producer hands the rest back.
        self._advances.put_nowait(None)
        await asyncio.gather(self._advancer, return_exceptions=True)
        try:
            await self.producer.aclose()
        except Exception as err:
            log.warning("Closing the shared poll of %s failed: %s", self.producer.queue_url, err)


def subscribe(key: Hashable, kwargs: dict[str, Any], subscriber: int) -> AsyncIterator[Any]:
    """Subscribe to the local stream of ``key`` in this process, starting it if needed."""
    state = _process.state_of(key)
    stream = state.local
    if stream is None or stream.closed:
        stream = state.local = LocalStream(state, kwargs)
    return stream.subscribe(subscriber)


async def wait_closed() -> None:
    """Wait until the streams whose last subscriber left have stopped."""
    while closing := [s.closing for s in _process.states().values() if s.closing and not s.closing.done()]:
        await asyncio.gather(*closing, return_exceptions=True)


def streams() -> dict[Hashable, LocalStream]:
    """The local streams open in this process (for tests and checks)."""
    return {key: s.local for key, s in _process.states().items() if s.local is not None}
