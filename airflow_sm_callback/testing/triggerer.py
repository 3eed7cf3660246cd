"""
Run event triggers the way Airflow's triggerer runs shared streams, without a triggerer.

:class:`SharedStreamHarness` subscribes triggers through Airflow's own
:class:`~airflow.triggers.shared_stream.SharedStreamManager`, drives their
``filter_shared_stream``, binds every event they fire to its raw event and confirms it
persisted after ``persist_delay`` seconds, which stands for the metadata database write (in a
triggerer the confirmation arrives on the next state sync). A trigger that fires once is then
cancelled, as the triggerer cancels a task's trigger once the task resumes. With ``resume_delay``
it also plays the resumed task's part for :class:`SageMakerCallbackTrigger` events: that many
seconds after the persist the task succeeds with the callback (and deletes the messages itself
when the event says ``deleted_by="task"``, as the sensor's ``execute_complete`` does). It stands
for the triggerer's supervisor and the metadata database too: the shared streams read from it
the states of the task instances they handed callbacks to (deferred from the moment a task's
trigger is added, scheduled once its event persisted, success once the resumed task's part
ran), and delete those messages once the task succeeded. Used by
the tests and the benchmark; useful to test your own DAGs' triggers offline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_sm_callback._airflow import SharedStreamManager
from airflow_sm_callback.triggers import _process
from airflow_sm_callback.triggers._process import use_local_streams, use_task_states
from airflow_sm_callback.triggers.local import wait_closed as local_streams_closed
from airflow_sm_callback.utils.aws import build_hook

if TYPE_CHECKING:
    from airflow_sm_callback._airflow import BaseEventTrigger, TriggerEvent
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.triggers.handoffs import TaskKey, TaskStates


@dataclass
class FiredEvent:
    """One event a trigger fired: which trigger, the event, when (``time.monotonic``)."""

    trigger_id: int
    event: TriggerEvent
    at: float
    persisted_at: float | None = None
    #: When the resumed task's part deleted the event's messages (``resume_delay``).
    completed_at: float | None = None


@dataclass
class _Running:
    trigger: BaseEventTrigger
    key: Hashable
    task: asyncio.Task[None]
    events: list[FiredEvent] = field(default_factory=list)


def _handles(event: TriggerEvent) -> list[str]:
    payload = event.payload if isinstance(event.payload, dict) else {}
    if payload.get("status") != "success":
        return []
    return list(payload.get("receipt_handles") or [])


def _for_task(event: TriggerEvent) -> bool:
    """Whether the event is a task's (a task resumes with it), not an ``AssetWatcher``'s."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    return payload.get("status") == "success" and payload.get("deleted_by") in ("task", "triggerer")


#: The harnesses open in this process: together they stand for the triggerer's supervisor.
_OPEN: list[SharedStreamHarness] = []
_PREVIOUS_SOURCE: list[TaskStates | None] = []
_PREVIOUS_LOCAL: list[bool | None] = []
#: The task instance states of the harnesses open in this process (one metadata database).
_TASK_STATES: dict[TaskKey, str] = {}


async def _harness_task_states(keys: Sequence[TaskKey]) -> Mapping[TaskKey, str | None]:
    return {key: _TASK_STATES[key] for key in keys if key in _TASK_STATES}


class SharedStreamHarness:
    """
    Triggers sharing streams in one event loop, as in one triggerer process.

    From Airflow 3.3 it drives each trigger's ``filter_shared_stream`` through Airflow's
    ``SharedStreamManager``. Below 3.3, which has no shared streams, it runs each trigger's
    ``run()`` as that triggerer does, and the triggers join the provider's own shared poll
    (:mod:`airflow_sm_callback.triggers.local`); persist confirmations then have no part
    (Airflow gives none), and ``persist_delay`` only times the cancel and the resume.

    :param persist_delay: seconds between an event and its persist confirmation (``None``: never
        confirm, as when the metadata database write fails).
    :param cancel_after_fire: seconds after the confirmation at which a trigger that fires once is
        cancelled (the triggerer's next sync).
    :param ack_timeout: the manager's per-event ack timeout (``[triggerer] shared_stream_ack_timeout``).
    :param resume_delay: seconds after the persist confirmation at which the resumed task's part
        deletes the messages a ``SageMakerCallbackTrigger`` event carries (``None``: never, as
        when the task does not resume).
    :param local: run the triggers' ``run()`` on the provider's own shared polls, as below
        Airflow 3.3 (``None``: so below 3.3, Airflow's shared streams from 3.3).
    """

    #: The ``local`` of harnesses that do not say (``None``: by the Airflow version); for tests
    #: that run the same scenarios on both paths.
    default_local: ClassVar[bool | None] = None

    def __init__(
        self,
        *,
        persist_delay: float | None = 0.5,
        cancel_after_fire: float = 0.2,
        ack_timeout: float = 300.0,
        max_subscriber_queue: int = 1024,
        resume_delay: float | None = None,
        local: bool | None = None,
    ) -> None:
        if local is None:
            local = self.default_local if self.default_local is not None else SharedStreamManager is None
        if not local and SharedStreamManager is None:
            raise RuntimeError("Airflow below 3.3 has no shared streams: only local=True runs here")
        self.manager = (
            None
            if local
            else SharedStreamManager(ack_timeout=ack_timeout, max_subscriber_queue=max_subscriber_queue)
        )
        self.persist_delay = persist_delay
        self.cancel_after_fire = cancel_after_fire
        self.resume_delay = resume_delay
        self.events: list[FiredEvent] = []
        self.failures: dict[int, BaseException] = {}
        self._running: dict[int, _Running] = {}
        self._fired = asyncio.Event()
        self._hooks: dict[Hashable, SageMakerCallbackHook] = {}
        self._resumes: set[asyncio.Task[None]] = set()
        #: The states of the task instances whose triggers were added, shared by the harnesses
        #: open in this process (triggerers of one Airflow).
        self.task_states = _TASK_STATES
        if not _OPEN:
            _TASK_STATES.clear()
            _PREVIOUS_SOURCE.append(use_task_states(_harness_task_states))
            _PREVIOUS_LOCAL.append(use_local_streams(True if self.manager is None else None))
        _OPEN.append(self)

    def add(self, trigger_id: int, trigger: BaseEventTrigger, *, fires_once: bool = True) -> None:
        """Start a trigger (``filter_shared_stream`` on its shared stream)."""
        key = trigger.shared_stream_key()
        if key is None:
            raise ValueError(f"{type(trigger).__name__} does not share a stream")
        owner = _owner_of(trigger) if fires_once else None
        if owner is not None:
            _TASK_STATES[owner] = "deferred"  # its task deferred on it
        if self.manager is not None:
            stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
            events = trigger.filter_shared_stream(stream)
        else:
            events = trigger.run()
        task = asyncio.create_task(self._drive(trigger_id, trigger, key, events, fires_once))
        self._running[trigger_id] = _Running(trigger, key, task)

    async def _drive(
        self, trigger_id: int, trigger: BaseEventTrigger, key: Hashable, events: Any, fires_once: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for event in events:
                seq = (
                    self.manager.bind_pending_event(trigger_id=trigger_id, key=key)
                    if self.manager is not None
                    else None
                )
                fired = FiredEvent(trigger_id, event, time.monotonic())
                self.events.append(fired)
                self._running[trigger_id].events.append(fired)
                self._fired.set()
                if self.persist_delay is not None:
                    loop.call_later(self.persist_delay, self._confirm, fired, seq)
                    if fires_once:
                        loop.call_later(self.persist_delay + self.cancel_after_fire, self._cancel, trigger_id)
                    if self.resume_delay is not None and _for_task(event):
                        loop.call_later(self.persist_delay + self.resume_delay, self._resume, trigger, fired)
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self.failures[trigger_id] = err
        finally:
            if self.manager is not None:
                await self.manager.unsubscribe(trigger_id, key)
            else:
                await events.aclose()

    def _confirm(self, fired: FiredEvent, seq: int | None) -> None:
        fired.persisted_at = time.monotonic()
        running = self._running.get(fired.trigger_id)
        owner = _owner_of(running.trigger) if running is not None and _for_task(fired.event) else None
        if owner is not None and _TASK_STATES.get(owner) == "deferred":
            _TASK_STATES[owner] = "scheduled"  # Airflow writes the event: the task is to resume
        if seq is not None and self.manager is not None:
            self.manager.confirm_persisted([seq])

    def _resume(self, trigger: BaseEventTrigger, fired: FiredEvent) -> None:
        task = asyncio.create_task(self._complete(trigger, fired))
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    async def _complete(self, trigger: BaseEventTrigger, fired: FiredEvent) -> None:
        """
        The resumed task's part: the callback is in its XCom, it deletes the messages when the
        event says so (one request, as the task), and it succeeds.
        """
        payload = fired.event.payload
        if payload.get("deleted_by") == "task" and _handles(fired.event):
            key = trigger.shared_stream_key()
            hook = self._hooks.get(key)
            if hook is None:
                hook = self._hooks[key] = build_hook(
                    aws_conn_id=getattr(trigger, "aws_conn_id", "aws_default"),
                    region_name=getattr(trigger, "region_name", None),
                    verify=getattr(trigger, "verify", None),
                    botocore_config=getattr(trigger, "botocore_config", None),
                )
            await hook.acomplete_handoff(payload["queue_url"], _handles(fired.event))
        owner = _owner_of(trigger)
        if owner is not None:
            self.task_states[owner] = "success"
        fired.completed_at = time.monotonic()

    def _landed(self, trigger: BaseEventTrigger, fired: FiredEvent) -> bool:
        """Whether the messages of a resumed task's event are deleted, or left to the task."""
        payload = fired.event.payload
        if fired.completed_at is None:
            return False
        if payload.get("deleted_by") != "triggerer" or not _handles(fired.event):
            return True
        state = _process.find(trigger.shared_stream_key())
        return state is None or state.ledger.landed(payload["callback"]["token"])

    async def wait_for_resumes(self, within: float = 30) -> None:
        """
        Wait until the tasks resumed so far have their callbacks, and the messages are deleted:
        by the task, or by the stream once it saw the task succeed.
        """
        if self.resume_delay is None:
            return
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pending = [
                fired
                for running in self._running.values()
                for fired in running.events
                if _for_task(fired.event) and not self._landed(running.trigger, fired)
            ]
            if not pending:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the resumed tasks' messages were not deleted within {within:.0f}s")

    def set_task_state(self, owner: TaskKey, state: str) -> None:
        """Set a task instance's state, as Airflow would (a task that failed, say)."""
        self.task_states[owner] = state

    def _cancel(self, trigger_id: int) -> None:
        running = self._running.get(trigger_id)
        if running is not None and not running.task.done():
            running.task.cancel()

    async def remove(self, trigger_id: int) -> None:
        """Cancel one trigger and wait until it has left its stream."""
        running = self._running.get(trigger_id)
        if running is not None and not running.task.done():
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)

    def events_of(self, trigger_id: int) -> list[FiredEvent]:
        """The events one trigger fired."""
        running = self._running.get(trigger_id)
        return list(running.events) if running else []

    async def wait_for_events(self, count: int, within: float) -> bool:
        """Wait until at least ``count`` events fired; return whether they did within ``within`` seconds."""
        deadline = time.monotonic() + within
        while len(self.events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._fired.clear()
            try:
                await asyncio.wait_for(self._fired.wait(), remaining)
            except TimeoutError:
                return len(self.events) >= count
        return True

    async def close(self) -> None:
        """Cancel every trigger and stop every stream."""
        tasks = [r.task for r in self._running.values() if not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._resumes, return_exceptions=True)
        if self.manager is not None:
            await self.manager.stop_all()
        else:
            await local_streams_closed()
        for hook in self._hooks.values():
            await hook.aclose()
        self._hooks.clear()
        if self in _OPEN:
            _OPEN.remove(self)
            if not _OPEN:
                _TASK_STATES.clear()
                use_task_states(_PREVIOUS_SOURCE.pop())
                use_local_streams(_PREVIOUS_LOCAL.pop())

    async def __aenter__(self) -> SharedStreamHarness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _owner_of(trigger: BaseEventTrigger) -> TaskKey | None:
    task_key = getattr(trigger, "task_key", None)
    return task_key() if callable(task_key) else None
