"""
SageMakerCallbackTrigger: wait for one callback (task deferral) or every callback (AssetWatcher).

Two ways to run, the same guarantees, one routing policy
(:mod:`airflow_sm_callback.protocol.routing`):

* **Shared stream (the triggerer).** Every trigger on one queue and connection in a triggerer
  shares one poll loop (:class:`~.stream.CallbackStreamProducer`, ack mode). Each trigger's
  filter claims the deliveries it wants at the stream's desk (:mod:`.desk`: the first claim
  wins) and yields one event per claim. When every trigger has moved past a batch and the
  claimed events are persisted, the producer routes the batch's messages: a task's claimed
  messages stay hidden for the trigger's ``handoff_visibility`` and are deleted once the task
  has the callback in XCom (by the triggerer that handed it on, :mod:`.handoffs`); an
  ``AssetWatcher``'s are deleted then (the asset event is the durable hand-off). A task
  restarted without its event (or retried, or cleared) defers again; in the same triggerer its
  new trigger takes the hand-off its task was given at once, while the step is open.
* **Standalone** :meth:`SageMakerCallbackTrigger.run` (``airflow dags test``, or when the
  triggerer cannot share). The trigger polls on its own (the hook's
  :meth:`~airflow_sm_callback.hooks.callback.SageMakerCallbackHook.apoll_for_callback`), keeps
  the claimed messages hidden for ``handoff_visibility`` seconds and puts their receipt handles
  in the event; the task deletes them in ``execute_complete`` after pushing the callback to XCom.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import BaseEventTrigger, TaskKey, TriggerEvent
from airflow_sm_callback.hooks.errors import describe_error, is_transient
from airflow_sm_callback.protocol import routing
from airflow_sm_callback.protocol.matching import CallbackMatcher
from airflow_sm_callback.triggers import _process
from airflow_sm_callback.triggers.events import error_event, success_event, timeout_event
from airflow_sm_callback.triggers.handoffs import HandOff, HandOffLedger
from airflow_sm_callback.triggers.stream import CallbackStreamProducer, hook_for, stream_key

if TYPE_CHECKING:
    from airflow_sm_callback._airflow import SharedStreamProducer
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.protocol.message import CallbackMessage
    from airflow_sm_callback.triggers.desk import CallbackBatch, StreamDesk

__all__ = ["SageMakerCallbackTrigger"]

#: Longest pause between polls after transient errors.
MAX_ERROR_BACKOFF: Final = 30.0


class SageMakerCallbackTrigger(BaseEventTrigger):
    """
    Fire when a SageMaker Pipelines callback that ``matcher`` wants arrives on an SQS queue.

    Deferred from :class:`~airflow_sm_callback.sensors.callback.SageMakerCallbackSensor` it
    fires once; in an ``AssetWatcher`` it fires once per callback (a DAG run per callback, the
    callback in the asset event's extra). In the triggerer every trigger on one queue and
    connection shares one poll loop (see the module docstring).

    .. note:: In an ``AssetWatcher`` it has no trigger queue, like every asset watcher's
       trigger: a triggerer started with ``--queues`` does not pick it up. Deferred from a task
       it gets the task's queue when ``[triggerer] queues_enabled`` is set, as any deferred
       task's trigger does.

    :param queue_url: the SQS queue the callback steps send to.
    :param matcher: which callbacks to take: a :class:`~airflow_sm_callback.protocol.CallbackMatcher`
        or its ``to_dict()``.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: Whether to verify SSL certificates.
    :param botocore_config: botocore ``Config`` kwargs.
    :param wait_time_seconds: long-poll time of the standalone path (the shared stream always
        long-polls 20 seconds).
    :param handoff_visibility: seconds a claimed message stays hidden once this trigger fired
        for a task, until it is deleted once the callback is in the task's XCom (the standalone
        path; and the shared stream, from the event's persist on). An ``AssetWatcher``'s
        messages are deleted once its asset event is persisted.
    :param single_event: fire once and stop (task deferral). Default: once when the trigger
        belongs to a task instance, every callback otherwise (``AssetWatcher``).
    :param deadline: a UNIX time at which a single-event trigger stops waiting and fires a
        ``timeout`` event (so the task can close the step); ``None`` waits without end.
    :param not_before: a UNIX time before which a single-event trigger does not fire: a callback
        claimed earlier is held (hidden on the queue) until then. The sensor sets it a few
        seconds after it defers, so that the scheduler has seen the deferring process end before
        the task resumes (see :mod:`airflow_sm_callback.utils.settings`).
    """

    def __init__(
        self,
        *,
        queue_url: str,
        matcher: CallbackMatcher | dict[str, Any],
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        wait_time_seconds: int = 20,
        handoff_visibility: int = 900,
        single_event: bool | None = None,
        deadline: float | None = None,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.queue_url = queue_url
        self.matcher = (
            matcher
            if isinstance(matcher, CallbackMatcher)
            else CallbackMatcher.from_dict(_airflow.decoded_kwarg(matcher))
        )
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = _airflow.decoded_kwarg(botocore_config)
        self.wait_time_seconds = wait_time_seconds
        self.handoff_visibility = handoff_visibility
        self.single_event = single_event
        self.deadline = deadline
        self.not_before = not_before
        #: Tokens this trigger fired, and the message ids that carried them (a copy has another id).
        self._fired_tokens: set[str] = set()
        self._fired_ids: set[str] = set()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "queue_url": self.queue_url,
                "matcher": self.matcher.to_dict(),
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
                "wait_time_seconds": self.wait_time_seconds,
                "handoff_visibility": self.handoff_visibility,
                "single_event": self.single_event,
                "deadline": self.deadline,
                "not_before": self.not_before,
            },
        )

    @property
    def fires_once(self) -> bool:
        """Whether this trigger stops after its first callback."""
        if self.single_event is not None:
            return self.single_event
        return self.task_instance is not None

    def task_key(self) -> TaskKey | None:
        """The task instance this trigger fires for (``None`` outside a triggerer, or for a watcher)."""
        ti = self.task_instance
        if ti is None or not self.fires_once:
            return None
        try:
            map_index = ti.map_index
            return TaskKey(ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else int(map_index))
        except AttributeError:
            return None

    def _remaining(self) -> float | None:
        """Seconds until the deadline (``None`` without one, or for a trigger that fires often)."""
        if self.deadline is None or not self.fires_once:
            return None
        return self.deadline - time.time()

    def _hold_left(self) -> float:
        """Seconds until a single-event trigger may fire (``not_before``), 0 when it may now."""
        if self.not_before is None or not self.fires_once:
            return 0.0
        return max(0.0, self.not_before - time.time())

    async def _hold(self) -> None:
        """Before a single-event trigger fires: wait until ``not_before``."""
        delay = self._hold_left()
        if delay > 0:
            self.log.info("Callback claimed; resuming the task in %.1fs", delay)
            await asyncio.sleep(delay)

    def hook(self) -> SageMakerCallbackHook:
        """A hook on this trigger's connection (for the standalone path)."""
        return hook_for(self.serialize()[1])

    def _fired(self, callback: CallbackMessage, message_ids: Iterable[str]) -> None:
        self._fired_tokens.add(callback.token)
        self._fired_ids.update(message_ids)

    # -- standalone -----------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if _process.local_streams():
            # Below Airflow 3.3, in a triggerer: this process's one poll of the queue and
            # connection, through the same filter as Airflow's shared streams (see .local).
            from airflow_sm_callback.triggers import local

            key = self.shared_stream_key()
            assert key is not None
            feed = local.subscribe(key, self.serialize()[1], id(self))
            async for event in self.filter_shared_stream(feed):
                yield event
            return
        hook = self.hook()
        # A watcher's own record of what it fired: later messages of those tokens are deleted.
        handed_on = HandOffLedger()
        errors = 0
        try:
            while True:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    await hook.aclose()  # before the last event: the inline runner drops us after it
                    yield TriggerEvent(timeout_event(self.deadline))
                    return
                wait = (
                    self.wait_time_seconds
                    if remaining is None
                    else max(0, min(self.wait_time_seconds, int(remaining)))
                )
                try:
                    taken = await hook.apoll_for_callback(
                        self.queue_url,
                        self.matcher,
                        wait_time_seconds=wait,
                        handoff_visibility=self.handoff_visibility,
                        handoffs=handed_on,
                    )
                except Exception as err:
                    if not is_transient(err):
                        message = f"cannot wait for callbacks on {self.queue_url}: {describe_error(err)}"
                        if not self.fires_once:
                            raise RuntimeError(message) from err
                        await hook.aclose()
                        yield TriggerEvent(error_event(message))
                        return
                    errors += 1
                    delay = min(MAX_ERROR_BACKOFF, 2.0 ** min(errors, 6) / 2)
                    self.log.warning(
                        "Waiting on %s: %s; trying again in %.0fs", self.queue_url, describe_error(err), delay
                    )
                    await asyncio.sleep(delay)
                    continue
                errors = 0
                if taken is None:
                    continue
                await hook.amask(taken.token)
                self.log.info("Callback for %s arrived", taken.callback.pipeline_execution_arn)
                self._fired(taken.callback, taken.message_ids)
                await self._hold()
                event = success_event(
                    taken.callback,
                    self.queue_url,
                    taken.receipt_handles,
                    deleted_by="task" if self.fires_once else "triggerer",
                )
                if self.fires_once:
                    await hook.aclose()
                    yield TriggerEvent(event)
                    return
                yield TriggerEvent(event)
                # An AssetWatcher resumed us: the runner has taken the event; delete its messages.
                handed_on.record(taken, routing.Claim(id(self), watcher=True))
                await self._delete_quietly(hook, taken.receipt_handles)
        finally:
            await hook.aclose()

    async def _delete_quietly(self, hook: SageMakerCallbackHook, receipt_handles: Sequence[str]) -> None:
        """Delete messages already handed on; a failure leaves them to come back as stale."""
        try:
            await hook.acomplete_handoff(self.queue_url, receipt_handles)
        except Exception as err:
            self.log.warning("Deleting handed-on messages failed: %s", describe_error(err))

    # -- shared stream --------------------------------------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        return stream_key(self.serialize()[1])

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return CallbackStreamProducer(kwargs)

    def _claim_copies(self, batch: CallbackBatch, deliveries: Sequence[routing.Delivery]) -> None:
        """
        Claim further copies of callbacks this trigger already fired (SQS delivers at least once,
        and a pipeline may send a token twice), so that the stream deletes them. The first copy
        stays on the queue until its event is persisted, so nothing is lost if that fails.
        """
        for delivery in deliveries:
            if delivery.token in self._fired_tokens and self._fired_ids.isdisjoint(delivery.message_ids):
                batch.desk.claim(batch.id, delivery.token, routing.Claim(id(self), copy=True))

    async def _taken_again(self, state: _process.StreamState) -> HandOff | None:
        """
        The hand-off this trigger's task was already given through this process's stream, when
        the task was restarted without its event and deferred again (see :mod:`.handoffs`).
        """
        owner = self.task_key()
        handoff = state.ledger.get(owner) if owner is not None else None
        if owner is None or handoff is None:
            return None
        callback = handoff.callback
        if not self.matcher.matches(callback, step_name=callback.step_name):
            return None
        # A stale hand-off (the task had it and its step is closed now) is not taken again.
        if await self._step_closed(state, callback):
            state.ledger.forget(owner)
            state.confirmer.drop(owner)
            return None
        if state.desk is not None:
            await state.desk.mask(callback.token)
        else:
            await _airflow.amask_secrets([callback.token])
        if handoff.deleted_by == "triggerer" and not handoff.landed:
            # Its event comes after the resume hold, and is not persisted when it is yielded.
            state.confirmer.watch(handoff, self.handoff_visibility, event_in=self._hold_left())
        state.ledger.given_again(owner, self.handoff_visibility)
        return handoff

    async def _step_closed(self, state: _process.StreamState, callback: CallbackMessage) -> bool:
        """Whether the callback's step is closed (``False`` when that cannot be told)."""
        if state.desk is not None:
            await state.desk.lookup(callback.pipeline_execution_arn)
            return state.desk.step_closed(callback.token)
        hook = self.hook()
        try:
            step = await hook.afind_callback_step(callback.pipeline_execution_arn, token=callback.token)
        except Exception as err:
            self.log.info(
                "Step look-up of %s failed: %s", callback.pipeline_execution_arn, describe_error(err)
            )
            return False
        finally:
            await hook.aclose()
        return step is not None and step.is_closed

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        key = self.shared_stream_key()
        assert key is not None
        state = _process.join(key, id(self))
        try:
            async for event in self._filter(state, aiter(shared_stream)):
                yield event
        finally:
            _process.leave(state, id(self))

    async def _filter(
        self, state: _process.StreamState, stream: AsyncIterator[CallbackBatch]
    ) -> AsyncIterator[TriggerEvent]:
        once = self.fires_once
        fired = False
        me = id(self)
        matcher = self.matcher
        execution = matcher.pipeline_execution_arn
        state.wait_for(me, execution)
        loop = asyncio.get_running_loop()
        remaining = self._remaining()
        until = None if remaining is None else loop.time() + remaining
        owner = self.task_key()  # None unless it fires once, for a task
        if owner is not None:
            state.warm(owner)
        last_desk: StreamDesk | None = None
        try:
            if once and (handoff := await self._taken_again(state)) is not None:
                callback = handoff.callback
                self._fired(callback, handoff.message_ids)
                self.log.info(
                    "Callback for %s taken again: it was handed to this task before it restarted",
                    callback.pipeline_execution_arn,
                )
                await self._hold()
                yield TriggerEvent(
                    success_event(callback, self.queue_url, handoff.receipt_handles, handoff.deleted_by)
                )
                fired = True
            while True:
                waiting: asyncio.Timeout | None = None
                try:
                    if fired or until is None:
                        batch = await anext(stream)
                    else:
                        async with asyncio.timeout_at(until) as waiting:
                            batch = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if waiting is None or not waiting.expired():
                        raise
                    yield TriggerEvent(timeout_event(self.deadline))
                    return
                # Every trigger sees every batch: one waiting for an execution looks it up.
                candidates = batch.deliveries if execution is None else batch.for_execution(execution)
                desk = last_desk = batch.desk
                # Keep moving past batches after firing (a batch resolves only when every
                # trigger has moved past it), taking further copies of what this trigger fired.
                if fired:
                    self._claim_copies(batch, candidates)
                    desk.walked(batch.id, me)
                    continue
                try:
                    for delivery in candidates:
                        if desk.claim_of(batch.id, delivery.token) is not None:
                            continue
                        if delivery.token in self._fired_tokens:
                            self._claim_copies(batch, [delivery])
                            continue
                        want, step_name = routing.wants(matcher, delivery, desk.knowledge)
                        if want is routing.Want.LOOK_UP:
                            await desk.lookup(delivery.callback.pipeline_execution_arn)
                            want, step_name = routing.wants(matcher, delivery, desk.knowledge)
                        if want is not routing.Want.YES:
                            continue
                        claim = routing.Claim(
                            me,
                            # Without Airflow's persist confirmation (the provider's own shared
                            # poll, below 3.3) an asset event's messages are held too, and
                            # deleted when they come back (see .local).
                            hold=self.handoff_visibility if once or not desk.persist_confirmed else None,
                            owner=owner if once else None,
                            deleted_by=(
                                "triggerer"
                                if once and owner is not None and _process.task_states_source()
                                else "task"
                            ),
                            step_name=step_name,
                            watcher=not once,
                        )
                        if not desk.claim(batch.id, delivery.token, claim):
                            continue
                        if once:
                            # It claims nothing more, here or in any batch: the rest may go
                            # back to the queue while its event waits for the resume hold and
                            # for Airflow to end this trigger.
                            state.fire(me, delivery.token, delivery.message_ids)
                            desk.left(me)
                        callback = (
                            delivery.callback.with_step_name(step_name) if step_name else delivery.callback
                        )
                        self._fired(callback, delivery.message_ids)
                        await desk.mask(callback.token)
                        self.log.info("Callback for %s arrived", callback.pipeline_execution_arn)
                        await self._hold()
                        handles = list(delivery.receipt_handles) if once else None
                        yield TriggerEvent(success_event(callback, desk.queue_url, handles, claim.deleted_by))
                        if once:
                            fired = True
                            break
                finally:
                    # Whatever this trigger did not claim may go back to the queue now.
                    desk.walked(batch.id, me)
        except Exception as err:
            if not once or fired:
                raise
            yield TriggerEvent(error_event(f"the shared poll of {self.queue_url} failed: {err}"))
        finally:
            if last_desk is not None:
                last_desk.left(me)  # no batch waits for this trigger to walk it any more
