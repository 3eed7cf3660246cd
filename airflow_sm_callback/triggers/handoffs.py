"""
Hand-offs: which callback a triggerer handed to which task, and deleting its messages once the task has it.

:class:`HandOffLedger` remembers what the shared streams of one process on one queue and
connection handed on; :class:`HandOffConfirmer` deletes the messages of a task's hand-off once
the task instance succeeded (the sensor pushes the callback to XCom before it returns).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import TaskKey
from airflow_sm_callback.hooks.errors import TRANSIENT_CODES, describe_error, is_transient

if TYPE_CHECKING:
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.protocol.message import CallbackMessage
    from airflow_sm_callback.protocol.routing import Claim, Delivery

__all__ = ["LANDED_STATES", "HandOff", "HandOffConfirmer", "HandOffLedger", "TaskKey", "TaskStates"]

log = logging.getLogger(__name__)

#: Task instance states in which a task has its callback: the sensor pushed it to XCom before it
#: succeeded, or closed the step itself and skipped (the execution was stopping).
LANDED_STATES: Final = frozenset({"success", "skipped"})

#: Seconds a released hand-off's token is handed back at once when its message comes here.
RELEASED_MEMORY: Final = 600.0

#: Reads the current states of task instances (``None`` for one not found).
TaskStates = Callable[[Sequence[TaskKey]], Awaitable[Mapping[TaskKey, str | None]]]


@dataclass(slots=True)
class HandOff:
    """
    A callback a shared stream handed to a task. Its messages stay hidden until they are deleted
    once the task has the callback in XCom: by the task (``deleted_by="task"``), or by the
    stream's :class:`HandOffConfirmer` once the task instance succeeded (``"triggerer"``).
    """

    callback: CallbackMessage
    receipt_handles: list[str]
    message_ids: frozenset[str]
    owner: TaskKey
    deleted_by: str = "task"
    #: The task succeeded (or skipped) and the confirmer deleted the messages.
    landed: bool = False
    #: ``time.monotonic()`` until which the hand-off is kept: the end of its messages' hold.
    until: float = 0.0
    #: ``time.monotonic()`` when it was last given to its task (by an event of this process).
    given_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class _Token:
    message_ids: frozenset[str]
    owner: TaskKey | None
    #: Handed on for good at once (an asset event): any message of it back is redundant.
    landed: bool


class HandOffLedger:
    """
    What the shared streams of one process on one queue and connection handed on.

    * **Tokens** (the last ``max_tokens``) with the message ids that carried them: a later
      message of such a token with another id is a copy (SQS delivers at least once; the
      ``Stopping`` message follows the ``Executing`` one), deleted; the original itself may
      come back (its task is slow, or was restarted) and is never taken for a copy, unless its
      task has already landed the hand-off.
    * **Hand-offs** to tasks (the last ``max_owners``), by task instance, each kept until its
      messages' hold ends: Airflow restarts a resumed task from scratch when it cannot start it
      (the DAG file failed to import, for example), dropping the event, and a retried or
      cleared task starts with its XCom cleared; the task defers again, and its new trigger
      takes its hand-off from here at once, instead of waiting for a message that is hidden, or
      already deleted. Each time, while the step is open: a hand-off whose step is closed is
      forgotten.

    It answers the hand-off questions of the routing policy
    (:class:`~airflow_sm_callback.protocol.routing.HandOffKnowledge`).
    """

    def __init__(self, max_tokens: int = 50_000, max_owners: int = 10_000) -> None:
        self._tokens: OrderedDict[str, _Token] = OrderedDict()
        self._handoffs: OrderedDict[TaskKey, HandOff] = OrderedDict()
        #: Tokens whose hand-offs were released (their tasks restarted), until when to say so.
        self._released: OrderedDict[str, float] = OrderedDict()
        self._max_tokens = max_tokens
        self._max_owners = max_owners

    def record(self, delivery: Delivery, claim: Claim) -> HandOff | None:
        """Remember a claim whose hand-off was durable; return the hand-off to a task, if it is one."""
        token = delivery.token
        to_task = claim.owner is not None and claim.hold is not None
        # A watcher's token is handed on for good: its asset event has it.
        self._tokens[token] = _Token(frozenset(delivery.message_ids), claim.owner, landed=claim.watcher)
        self._tokens.move_to_end(token)
        if len(self._tokens) > self._max_tokens:
            self._tokens.popitem(last=False)
        if not to_task:
            return None
        callback = delivery.callback.with_step_name(claim.step_name) if claim.step_name else delivery.callback
        handoff = HandOff(
            callback,
            list(delivery.receipt_handles),
            frozenset(delivery.message_ids),
            claim.owner,
            claim.deleted_by,
            until=time.monotonic() + float(claim.hold or 0),
        )
        self._handoffs[claim.owner] = handoff
        self._handoffs.move_to_end(claim.owner)
        if len(self._handoffs) > self._max_owners:
            self._handoffs.popitem(last=False)
        return handoff

    def handed_on(self, token: str) -> bool:
        """Whether the token was handed on through this process's stream."""
        return token in self._tokens

    def is_copy(self, token: str, message_id: str | None) -> bool:
        """Whether a message is a further copy of a token handed on (not its original message)."""
        known = self._tokens.get(token)
        return known is not None and message_id is not None and message_id not in known.message_ids

    def _handoff_of(self, token: str) -> HandOff | None:
        known = self._tokens.get(token)
        handoff = self._handoffs.get(known.owner) if known and known.owner else None
        return handoff if handoff is not None and handoff.callback.token == token else None

    def landed(self, token: str) -> bool:
        """Whether the token's receiver has the callback for good (so any message of it back is redundant)."""
        known = self._tokens.get(token)
        if known is not None and known.landed:
            return True
        handoff = self._handoff_of(token)
        return handoff is not None and handoff.landed

    def came_back(self, token: str, receipt_handles: Sequence[str], hidden_for: float) -> HandOff | None:
        """
        The original message of a hand-off was received again (its task is slow, restarted, or
        was retried): its new receipt handles. Returns the hand-off when the confirmer should
        look at its task again before the message is visible once more (``hidden_for`` seconds).
        """
        handoff = self._handoff_of(token)
        if handoff is None:
            return None
        handoff.receipt_handles = list(receipt_handles)
        handoff.until = max(handoff.until, time.monotonic() + hidden_for)
        if handoff.deleted_by == "triggerer" and not handoff.landed:
            return handoff
        return None

    def get(self, owner: TaskKey) -> HandOff | None:
        """The hand-off given to ``owner`` while its hold lasts (the task may start again)."""
        handoff = self._handoffs.get(owner)
        if handoff is not None and handoff.until < time.monotonic():
            del self._handoffs[owner]
            return None
        return handoff

    def given_again(self, owner: TaskKey, hold: float) -> None:
        """``owner``'s hand-off was given to its task again: kept for ``hold`` seconds more."""
        handoff = self._handoffs.get(owner)
        if handoff is not None:
            handoff.until = max(handoff.until, time.monotonic() + hold)
            handoff.given_at = time.monotonic()

    def release(self, handoff: HandOff, remember: float = RELEASED_MEMORY) -> None:
        """
        ``handoff`` was given back (its task was restarted and waits for it anew, maybe in
        another triggerer): forgotten, and its token said :meth:`released` for ``remember``
        seconds, so that its message is handed back at once when it comes here on its way.
        """
        self.forget(handoff.owner)
        token = handoff.callback.token
        self._released.pop(token, None)
        self._released[token] = time.monotonic() + remember
        while self._released and next(iter(self._released.values())) < time.monotonic():
            self._released.popitem(last=False)
        if len(self._released) > self._max_owners:
            self._released.popitem(last=False)

    def released(self, token: str) -> bool:
        """Whether the token's hand-off was released here lately (see :meth:`release`)."""
        until = self._released.get(token)
        return until is not None and until >= time.monotonic()

    def forget(self, owner: TaskKey) -> None:
        """Forget the hand-off given to ``owner`` (its step is closed)."""
        self._handoffs.pop(owner, None)

    def kept_until(self) -> float | None:
        """When the last hand-off still kept ends (``time.monotonic()``), or ``None`` when none is."""
        now = time.monotonic()
        for owner in [o for o, h in self._handoffs.items() if h.until < now]:
            del self._handoffs[owner]
        return max((h.until for h in self._handoffs.values()), default=None)


@dataclass(eq=False, slots=True)
class _Watch:
    handoff: HandOff
    #: Loop time at which the messages' hold ends (they are visible again).
    until: float
    next_look: float
    gap: float
    #: Loop time before which a deferred task may still be in the deferral its event ends (the
    #: event not persisted yet), unless it was seen out of it meanwhile.
    persisted_by: float = 0.0
    #: Its task was seen in another state than deferred since the watch began.
    left_deferred: bool = False
    #: ``time.monotonic()`` when its task was first seen deferred again (restarted without its event).
    deferred_since: float | None = None


class HandOffConfirmer:
    """
    Deletes the messages of a stream's hand-offs to tasks once the tasks have their callbacks,
    many at a time (``DeleteMessageBatch``, ten a request).

    A task has its callback once its task instance succeeded (the sensor pushes the callback to
    XCom before it returns) or skipped (it closed the step of a stopping execution). The
    confirmer reads the states of the task instances it waits for (one request per DAG and 100
    runs, through the triggerer's supervisor) from 2 seconds after the event was persisted,
    with gaps that double up to 10 seconds, until the messages' hold ends; a message that comes
    back after that is looked at again (:meth:`HandOffLedger.came_back`).

    A task seen deferred again, twice in a row, was restarted without its event and waits for
    its callback anew. Deferred *again*: a watch that begins before its event is surely
    persisted (Airflow below 3.3 confirms no persist, and a trigger that takes a hand-off again
    waits out its resume hold first) may see the task still in the deferral its event ends; so
    there a deferred task counts only once it was seen in another state since, or once its
    event is surely persisted (``UNPERSISTED_GRACE`` after it is yielded). Unless a trigger of
    this process took the hand-off again meanwhile, the task's new trigger runs in another
    triggerer, which cannot see the hidden message: the confirmer hands the message back at
    once (:meth:`release`), so that it reaches that trigger in seconds instead of when the hold
    ends. It runs while there is something to wait for, and outlives the stream's producer (a
    stream stops when its last trigger leaves, before the tasks resume). Nothing is lost when it
    stops early: the messages come back when their hold ends, and are delivered or deleted then.

    :param states: where task instance states are read (``None``: nowhere, nothing is deleted).
    :param on_idle: called when it has nothing left to do.
    :param on_release: called with a hand-off it released (its task runs elsewhere now).
    """

    FIRST_LOOK: Final = 2.0
    MAX_GAP: Final = 10.0
    TICK: Final = 1.0
    DELETE_ATTEMPTS: Final = 10
    #: Seconds between the two looks that see a task deferred again before its message is released.
    DEFERRED_AGAIN_LOOK: Final = 3.0
    #: Seconds past the expected persist of its event after which a task never seen out of its
    #: deferral counts as deferred again (an event is written within a second or two; a loaded
    #: triggerer was seen taking more than five).
    UNPERSISTED_GRACE: Final = 20.0

    def __init__(
        self,
        states: Callable[[], TaskStates | None],
        on_idle: Callable[[], None] = lambda: None,
        on_release: Callable[[HandOff], None] = lambda _: None,
    ) -> None:
        self._states = states
        self._on_idle = on_idle
        self._watches: dict[TaskKey, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._queue_url: str | None = None
        self._hook_factory: Callable[[], SageMakerCallbackHook] | None = None
        self._on_release = on_release
        #: Messages deleted, hand-offs released, and task state rounds made (for tests and figures).
        self.deleted = 0
        self.released = 0
        self.rounds = 0

    def connect(self, queue_url: str, hook_factory: Callable[[], SageMakerCallbackHook]) -> None:
        """The queue, and how to make a hook on the stream's connection (set by the producer)."""
        self._queue_url = queue_url
        self._hook_factory = hook_factory

    @property
    def waiting(self) -> int:
        """Hand-offs whose task has not been seen with its callback yet."""
        return len(self._watches)

    @property
    def idle(self) -> bool:
        """Whether it has nothing to wait for and nothing to delete."""
        return not self._watches and (self._task is None or self._task.done())

    def watch(self, handoff: HandOff, hidden_for: float, *, event_in: float | None = None) -> None:
        """
        Look at ``handoff``'s task until its messages, hidden for ``hidden_for`` seconds, are
        visible. ``event_in``: ``None`` when the event that gave it to its task is persisted
        (Airflow confirmed it); else the seconds until that event is yielded (0: it was just
        yielded), its persist then expected within ``UNPERSISTED_GRACE`` seconds more.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        first = min(self.FIRST_LOOK, max(0.0, hidden_for - 1.0))
        persisted_by = now if event_in is None else now + event_in + self.UNPERSISTED_GRACE
        self._watches[handoff.owner] = _Watch(
            handoff, now + hidden_for, now + first, self.FIRST_LOOK, persisted_by=persisted_by
        )
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            # Work for every task of the process: logged to the triggerer, not to this trigger.
            self._task = loop.create_task(
                self._run(), name="sagemaker-callback-hand-offs", context=_airflow.process_context()
            )

    def drop(self, owner: TaskKey) -> None:
        """Stop waiting for ``owner`` (its hand-off is forgotten)."""
        self._watches.pop(owner, None)

    async def aclose(self) -> None:
        """Stop now (the messages come back when their hold ends)."""
        self._watches.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        hook: SageMakerCallbackHook | None = None
        #: Messages of landed hand-offs still to delete, with the attempts made.
        deletes: dict[str, int] = {}
        try:
            while self._watches or deletes:
                await asyncio.sleep(self.TICK)
                landed, released = await self._landed()
                for watch in landed:
                    deletes.update(dict.fromkeys(watch.handoff.receipt_handles, 0))
                if (deletes or released) and self._queue_url is not None and self._hook_factory is not None:
                    hook = hook or self._hook_factory()
                    if released:
                        await self._release(hook, self._queue_url, released)
                    if deletes:
                        deletes = await self._delete(hook, self._queue_url, deletes)
                # Landed once the first delete was made: a message back from now on is redundant.
                for watch in landed:
                    watch.handoff.landed = True
                    watch.handoff.receipt_handles = []
        finally:
            if hook is not None:
                await hook.aclose()
            if not self._watches:
                # Once this task is done, so that ``idle`` holds when the callback asks.
                asyncio.get_running_loop().call_soon(self._on_idle)

    async def _landed(self) -> tuple[list[_Watch], list[HandOff]]:
        """
        Look at the tasks due for a look; return the watches of those that have their callbacks,
        and the hand-offs to release (their tasks were restarted and wait for them anew).
        """
        now = asyncio.get_running_loop().time()
        due = [w for w in self._watches.values() if w.next_look <= now]
        source = self._states()
        if not due or source is None:
            return [], []
        self.rounds += 1
        try:
            states = await source([w.handoff.owner for w in due])
        except Exception as err:
            log.warning("Reading the states of %d waiting tasks failed: %s", len(due), err)
            states = {}
        landed: list[_Watch] = []
        released: list[HandOff] = []
        for watch in due:
            owner = watch.handoff.owner
            if self._watches.get(owner) is not watch:
                continue  # watched again meanwhile
            state = states.get(owner)
            # A deferred task that may still be in the deferral its event ends counts for nothing.
            deferred = state == "deferred" and (watch.left_deferred or now >= watch.persisted_by)
            if state in LANDED_STATES:
                landed.append(watch)
                del self._watches[owner]
            elif now >= watch.until:
                del self._watches[owner]  # visible again: looked at when it comes back
            elif deferred and watch.deferred_since is None:
                watch.deferred_since = time.monotonic()
                watch.next_look = min(now + self.DEFERRED_AGAIN_LOOK, watch.until)
            elif deferred and watch.handoff.given_at < watch.deferred_since:  # type: ignore[operator]
                released.append(watch.handoff)
                del self._watches[owner]
            else:
                # Resumed and on its way, still in the deferral its event ends, or given again here.
                watch.left_deferred = watch.left_deferred or state not in (None, "deferred")
                watch.deferred_since = None
                watch.gap = min(self.MAX_GAP, watch.gap * 2)
                watch.next_look = min(now + watch.gap, watch.until)
        return landed, released

    async def _release(self, hook: SageMakerCallbackHook, queue_url: str, released: list[HandOff]) -> None:
        """Hand the messages of restarted tasks' hand-offs back at once (their new triggers may be elsewhere)."""
        entries = [(handle, 0) for handoff in released for handle in handoff.receipt_handles]
        try:
            await hook.achange_visibility(queue_url, entries)
        except Exception as err:
            # They come back when their hold ends, as before.
            log.warning(
                "Handing back %d messages of restarted tasks failed: %s", len(entries), describe_error(err)
            )
            return
        for handoff in released:
            self.released += 1
            log.info(
                "Callback for %s handed back: its task was restarted and waits again, maybe in another triggerer",
                handoff.callback.pipeline_execution_arn,
            )
            self._on_release(handoff)

    async def _delete(
        self, hook: SageMakerCallbackHook, queue_url: str, deletes: dict[str, int]
    ) -> dict[str, int]:
        """
        Delete messages whose tasks have their callbacks; return those to try again (a transient
        error, at most ``DELETE_ATTEMPTS`` rounds). A message not deleted comes back when its
        hold ends, and is deleted then (its hand-off landed).
        """
        handles = list(deletes)
        try:
            result = await hook.adelete_messages(queue_url, handles)
        except Exception as err:
            log.warning("Deleting %d handed-on messages failed: %s", len(handles), describe_error(err))
            again = set(handles) if is_transient(err) else set()
        else:
            self.deleted += len(result.succeeded)
            if result.succeeded:
                log.info("Deleted %d messages of callbacks whose tasks have them", len(result.succeeded))
            again = {h for h, code, _ in result.failed if code in TRANSIENT_CODES}
        return {h: deletes[h] + 1 for h in again if deletes[h] + 1 < self.DELETE_ATTEMPTS}
