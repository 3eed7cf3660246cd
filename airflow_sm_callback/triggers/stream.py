"""
CallbackStreamProducer: the one poll loop of a shared stream (ack mode): receive, broadcast, advance.

One 20-second long poll at a time while the queue is idle; when a receive comes back full,
eight receivers at once drain the burst. Receiving runs beside broadcasting: a batch holds what
arrived since the previous one (while a burst is drained, what arrives within 0.1 s, at most
200 messages), since each batch wakes every trigger on the stream and updates the secrets
masker once whatever its size. Messages stay hidden while the triggers decide (their
visibility is extended after 10 seconds). When Airflow advances a batch (every trigger moved
past it, and the events derived from it were persisted), the producer reads the batch's claims
from its :class:`~.desk.StreamDesk` and applies the routing policy
(:func:`airflow_sm_callback.protocol.routing.decide`) to every message of it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from airflow_sm_callback._airflow import AdvanceItem, SharedStreamProducer
from airflow_sm_callback.hooks._operations import SQS_BATCH_SIZE
from airflow_sm_callback.hooks.errors import describe_error, is_transient
from airflow_sm_callback.protocol import routing
from airflow_sm_callback.triggers import _process
from airflow_sm_callback.triggers.desk import CallbackBatch, StreamDesk
from airflow_sm_callback.triggers.writes import QueueWrites
from airflow_sm_callback.utils.aws import build_hook

if TYPE_CHECKING:
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.protocol.message import ReceivedMessages, UnparsedMessage

__all__ = ["CallbackStreamProducer", "hook_for", "stream_key"]

#: Visibility a received message gets while the shared stream decides about it.
RECEIVE_VISIBILITY: Final = 30
#: Messages still undecided after this many seconds get their visibility extended.
HEARTBEAT_AFTER: Final = 10.0
#: Receives made at once to drain a burst (each up to 10 messages).
BURST_RECEIVES: Final = 8
#: Receive results waiting to be broadcast before receiving pauses (back-pressure).
MAX_PENDING_RECEIVES: Final = 4 * BURST_RECEIVES
#: While a burst is drained, seconds a batch gathers receives before it is broadcast ...
BATCH_WINDOW: Final = 0.1
#: ... or this many messages, whichever comes first.
MAX_BATCH_MESSAGES: Final = 200
#: Longest pause between receives after transient errors.
MAX_ERROR_BACKOFF: Final = 30.0

#: Batch ids, unique in the process (a claim on a batch of an earlier poll is refused).
_BATCH_IDS = itertools.count()


def stream_key(kwargs: dict[str, Any]) -> Hashable:
    """The key of the shared stream of one queue and connection (from a trigger's kwargs)."""
    import json

    return (
        "airflow_sm_callback",
        kwargs["queue_url"],
        kwargs.get("aws_conn_id"),
        kwargs.get("region_name"),
        json.dumps(kwargs.get("verify")),
        json.dumps(kwargs.get("botocore_config"), sort_keys=True, default=str),
    )


def hook_for(kwargs: dict[str, Any]) -> SageMakerCallbackHook:
    """A hook on the connection of a trigger's kwargs: the one way triggers and streams build it."""
    return build_hook(
        aws_conn_id=kwargs.get("aws_conn_id"),
        region_name=kwargs.get("region_name"),
        verify=kwargs.get("verify"),
        botocore_config=kwargs.get("botocore_config"),
    )


@dataclass(slots=True)
class _Inflight:
    """A broadcast batch until Airflow advances it, with what the triggers never see."""

    batch: CallbackBatch
    copies: tuple[str, ...]
    invalid: tuple[UnparsedMessage, ...]
    #: Settled once every filter walked it: its unclaimed deliveries, copies and unusable
    #: messages are decided then; the advance decides the claimed ones.
    settled: bool = False


class CallbackStreamProducer(SharedStreamProducer):
    """The shared stream's producer: see the module docstring."""

    def __init__(self, kwargs: dict[str, Any], *, persist_confirmed: bool = True) -> None:
        self.kwargs = kwargs
        #: Whether a batch is advanced only after its events persisted (see :class:`StreamDesk`).
        self.persist_confirmed = persist_confirmed
        self.queue_url: str = kwargs["queue_url"]
        self._inflight: dict[int, _Inflight] = {}
        self._desk: StreamDesk | None = None
        self._state: _process.StreamState | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._received: asyncio.Queue[Any] | None = None
        self._draining = False
        #: Deletes and visibility changes, in order and grouped: a hold set in advance() goes
        #: after a heartbeat's change of the same message already under way.
        self._writes = QueueWrites(lambda: self.desk.hook, self.queue_url)
        #: Batches being settled (kept referenced until done).
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def desk(self) -> StreamDesk:
        if self._desk is None:
            raise RuntimeError("the shared stream is not open")
        return self._desk

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        state = self._state = _process.join(stream_key(self.kwargs), id(self))
        state.confirmer.connect(self.queue_url, lambda: hook_for(self.kwargs))
        self._desk = state.desk = StreamDesk(
            hook_for(self.kwargs),
            self.queue_url,
            state.ledger,
            persist_confirmed=self.persist_confirmed,
            pollers=state.pollers,
            on_walked=self._settle_soon,
        )
        self._heartbeat = asyncio.create_task(self._keep_hidden())
        self._received = asyncio.Queue(maxsize=MAX_PENDING_RECEIVES)
        self._receiver = asyncio.create_task(self._receive_loop(self._received))
        try:
            while True:
                results = await self._collect(self._received)
                received = [r for r in results if not isinstance(r, BaseException) and len(r)]
                if received:
                    batch = self._batch(received)
                    yield batch, batch.id
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        finally:
            self._receiver.cancel()

    async def _collect(self, received: asyncio.Queue[Any]) -> list[Any]:
        """
        The receive results of the next batch.

        Every batch costs the same whatever its size (each trigger on the stream is woken for it,
        and the secrets masker recompiles once for its tokens), so while a burst is being
        drained a batch gathers receives for up to ``BATCH_WINDOW`` seconds (or
        ``MAX_BATCH_MESSAGES`` messages); otherwise it goes out at once.
        """
        results = [await received.get()]
        count = len(results[0]) if not isinstance(results[0], BaseException) else 0
        loop = asyncio.get_running_loop()
        until = loop.time() + BATCH_WINDOW
        while self._draining and count < MAX_BATCH_MESSAGES and loop.time() < until:
            try:
                async with asyncio.timeout_at(until):
                    result = await received.get()
            except TimeoutError:
                break
            results.append(result)
            count += 0 if isinstance(result, BaseException) else len(result)
        while not received.empty():
            results.append(received.get_nowait())
        return results

    async def _receive_loop(self, out: asyncio.Queue[Any]) -> None:
        """
        Receive for the stream: one long poll at a time, and a burst drained as fast as it can
        be; every receive's result is handed on as it arrives. Ends by handing on the error
        when the queue cannot be read.
        """
        errors = 0
        while True:
            await self._until_someone_waits()
            try:
                first = await self._receive(wait_time_seconds=20)
                await out.put(first)
                if len(first) == SQS_BATCH_SIZE:
                    self._draining = True
                    try:
                        await self._drain(out)
                    finally:
                        self._draining = False
            except Exception as err:
                if not is_transient(err):
                    failure = RuntimeError(
                        f"cannot receive callbacks from {self.queue_url}: {describe_error(err)}"
                    )
                    failure.__cause__ = err
                    await out.put(failure)
                    return
                errors += 1
                delay = min(MAX_ERROR_BACKOFF, 2.0 ** min(errors, 6) / 2)
                self.desk.hook.log.warning(
                    "Receiving from %s failed (%s); trying again in %.0fs",
                    self.queue_url,
                    describe_error(err),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            errors = 0

    async def _drain(self, out: asyncio.Queue[Any]) -> None:
        """
        A receive came back full: receive without waiting, with one more receiver for every
        receive that comes back full (at most ``BURST_RECEIVES``), until one comes back short.
        Each receiver in flight then costs one short receive: a large burst is drained by eight
        at once, and the few messages another triggerer just handed back cost one or two.
        """
        assert self._state is not None
        state = self._state
        loop = asyncio.get_running_loop()
        receivers: set[asyncio.Task[None]] = set()
        short = False

        async def receiver() -> None:
            nonlocal short
            while not short and state.someone_waits:
                result = await self._receive(wait_time_seconds=0)
                await out.put(result)
                if len(result) < SQS_BATCH_SIZE:
                    short = True
                elif len(receivers) < BURST_RECEIVES:
                    receivers.add(loop.create_task(receiver()))

        receivers.add(loop.create_task(receiver()))
        failures: list[BaseException] = []
        finished: set[asyncio.Task[None]] = set()
        try:
            while receivers - finished:
                done, _ = await asyncio.wait(receivers - finished)
                finished |= done
                failures.extend(e for t in done if (e := t.exception()) is not None)
                short = short or bool(failures)
        finally:
            for task in receivers - finished:
                task.cancel()
        if failures:
            raise next((f for f in failures if not is_transient(f)), failures[0])

    def _walkers(self) -> set[int]:
        """The triggers here that may still claim from a batch: not this producer, none that fired."""
        state = self._state
        assert state is not None
        return state.users - state.fired - {id(self)}

    async def _until_someone_waits(self) -> None:
        """
        Receive nothing while every trigger of the stream here has fired (Airflow has yet to end
        them): a message received then is wanted by none of them, and another triggerer's
        waiter would get it a receive later.
        """
        assert self._state is not None
        await self._state.until_someone_waits()

    async def _receive(self, *, wait_time_seconds: int) -> ReceivedMessages:
        return await self.desk.hook.areceive_callbacks(
            self.queue_url, wait_time_seconds=wait_time_seconds, visibility_timeout=RECEIVE_VISIBILITY
        )

    def _batch(self, received: list[ReceivedMessages]) -> CallbackBatch:
        desk = self.desk
        state = self._state
        assert state is not None
        for result in received:
            for callback in result.callbacks:
                state.pollers.observe(
                    callback.message_id, callback.receive_count, callback.sent_at, callback.first_received_at
                )
            for bad in result.invalid:
                state.pollers.observe(
                    bad.message_id, bad.receive_count, first_received_at=bad.first_received_at
                )
        sorted_ = routing.sort(received, desk.knowledge)
        for bad in sorted_.invalid:
            desk.hook.warn_invalid(bad, self.queue_url)
        # What no trigger here may claim (each waits for another execution) is decided at once,
        # not after every filter walked it: another triggerer's waiter may want it now.
        wanted: list[routing.Delivery] = []
        elsewhere: list[routing.Delivery] = []
        for delivery in sorted_.deliveries:
            (wanted if state.may_want(delivery.callback.pipeline_execution_arn) else elsewhere).append(
                delivery
            )
        if elsewhere:
            self._apply_soon([self._decide(delivery, None) for delivery in elsewhere])
        batch = CallbackBatch.of(next(_BATCH_IDS), wanted, desk)
        # The filters on the stream now: once each has walked the batch, it is settled (at once
        # when there is none, or nothing in it to claim).
        walkers = self._walkers() if wanted else set()
        desk.open(batch.id, walkers)
        # Further copies of what a trigger here fired are its claims, deleted once the batch
        # advances (the trigger itself may be in its resume hold, walking nothing).
        for delivery in batch.deliveries:
            claimant = state.copy_claimant(delivery.token, delivery.message_ids)
            if claimant is not None:
                desk.claim(batch.id, delivery.token, routing.Claim(claimant, copy=True))
        self._inflight[batch.id] = _Inflight(batch, sorted_.copies, sorted_.invalid)
        if not walkers:
            self._settle_soon(batch.id)
        return batch

    def _apply_soon(self, decisions: list[routing.Decision]) -> None:
        task = asyncio.get_running_loop().create_task(self._apply(decisions))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _settle_soon(self, batch_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(batch_id))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, batch_id: int) -> None:
        """
        Every filter walked a batch: decide its unclaimed deliveries now (hand back, delete as
        stale or landed), with its copies and unusable messages; the claimed ones wait for the
        advance, which comes only once their events persisted.
        """
        inflight = self._inflight.get(batch_id)
        if inflight is None or inflight.settled:
            return
        inflight.settled = True
        claims = self.desk.claims_of(batch_id)
        decisions = [
            self._decide(delivery, None)
            for delivery in inflight.batch.deliveries
            if delivery.token not in claims
        ]
        decisions.extend(self._unseen(inflight))
        await self._apply(decisions)

    def _decide(
        self, delivery: routing.Delivery, claim: routing.Claim | None, clean: bool = True
    ) -> routing.Decision:
        """The policy's decision on a delivery; a hand-back at once is remembered for the estimate."""
        desk = self.desk
        decision = routing.decide(delivery, claim, desk.knowledge, clean=clean)
        if decision.verdict is routing.Verdict.HAND_BACK and decision.seconds == 0 and claim is None:
            assert self._state is not None
            for message_id in delivery.message_ids:
                self._state.pollers.handed_back_at_once(message_id)
        if decision.lookup is not None:
            desk.lookup_later(decision.lookup)
        if decision.came_back:
            # The original of a hand-off came back: its task is slow, or was restarted and waits
            # for it (here or in another triggerer).
            assert self._state is not None
            handoff = self._state.ledger.came_back(delivery.token, delivery.receipt_handles, decision.seconds)
            if handoff is not None:
                self._state.confirmer.watch(handoff, decision.seconds)
        return decision

    def _unseen(self, inflight: _Inflight) -> list[routing.Decision]:
        """Decisions on what the filters never see: further copies, and unusable messages."""
        decisions = []
        if inflight.copies:
            decisions.append(routing.Decision(routing.Verdict.DELETE, routing.Reason.COPY, inflight.copies))
        assert self._state is not None
        for bad in inflight.invalid:
            decision = routing.decide_invalid(bad, self.desk.knowledge)
            if decision.seconds == 0:
                self._state.pollers.handed_back_at_once(bad.message_id)
            decisions.append(decision)
        return decisions

    def get_advance_lane(self, broker_payload: Any) -> Hashable:
        # One lane per batch: a batch waiting for a persist never holds back the others.
        return broker_payload

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        desk = self.desk
        state = self._state
        assert state is not None
        decisions: list[routing.Decision] = []
        for item in batch:
            inflight = self._inflight.pop(item.broker_payload, None)
            claims = desk.close(item.broker_payload)
            if inflight is None:
                continue
            for delivery in inflight.batch.deliveries:
                claim = claims.get(delivery.token)
                if claim is None and inflight.settled:
                    continue  # decided when every filter had walked the batch
                decision = self._decide(delivery, claim, clean=item.outcome.is_clean)
                decisions.append(decision)
                if claim is not None and decision.record:
                    handoff = state.ledger.record(delivery, claim)
                    if handoff is not None and handoff.deleted_by == "triggerer" and claim.hold is not None:
                        # Hidden until the callback is in the task's XCom; the confirmer deletes
                        # the messages once the task instance succeeded.
                        state.confirmer.watch(
                            handoff, claim.hold, event_in=None if self.persist_confirmed else 0.0
                        )
            if not inflight.settled:
                decisions.extend(self._unseen(inflight))
        await self._apply(decisions)

    async def _apply(self, decisions: Sequence[routing.Decision]) -> None:
        # Nothing is lost when a write fails: what was not deleted comes back when its
        # visibility runs out.
        deletes, changes = routing.visibility_changes(decisions)
        await self._writes.write(deletes, changes)

    async def _keep_hidden(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_AFTER / 2)
            now = time.monotonic()
            entries = [
                (handle, RECEIVE_VISIBILITY)
                for inflight in list(self._inflight.values())
                if now - inflight.batch.received_at > HEARTBEAT_AFTER
                for delivery in self._undecided(inflight)
                for handle in delivery.receipt_handles
            ]
            if entries:
                await self._writes.write(changes=entries)

    def _undecided(self, inflight: _Inflight) -> list[routing.Delivery]:
        """The deliveries of a batch not decided yet (all, or once it settled, the claimed ones)."""
        if not inflight.settled:
            return list(inflight.batch.deliveries)
        claims = self.desk.claims_of(inflight.batch.id)
        return [d for d in inflight.batch.deliveries if d.token in claims]

    async def aclose(self) -> None:
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
        desk, state = self._desk, self._state
        if desk is None or state is None:
            return
        # Receives never broadcast, and batches never advanced (the stream stopped first), go
        # back to the queue at once.
        left = []
        while self._received is not None and not self._received.empty():
            result = self._received.get_nowait()
            if not isinstance(result, BaseException) and len(result):
                left.append(result)
        if left:
            self._batch(left)
        decisions = [
            routing.Decision(routing.Verdict.HAND_BACK, routing.Reason.NOT_DURABLE, handles)
            for inflight in self._inflight.values()
            for handles in (
                *(d.receipt_handles for d in self._undecided(inflight)),
                *(
                    (bad.receipt_handle,)
                    for bad in inflight.invalid
                    if bad.receipt_handle and not inflight.settled
                ),
            )
        ]
        self._inflight.clear()
        if state.desk is desk:
            state.desk = None
        try:
            if decisions:
                await self._apply(decisions)
            await self._writes.aclose()
        finally:
            await desk.aclose()
            _process.leave(state, id(self))
