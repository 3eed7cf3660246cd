"""
The triggerer process's state of shared streams: what outlives one trigger, and nothing longer than that.

A shared stream (one queue and connection) stops when its last trigger leaves, which is before
the tasks it handed callbacks to have resumed. What must outlive it lives here, one
:class:`StreamState` per stream key: the hand-off ledger (a restarted task's new trigger takes
its hand-off from it), the confirmer (it deletes the messages once the tasks have them) and the
first task state look of the process (:meth:`StreamState.warm`). A state is dropped once no
trigger and no producer uses it, its confirmer is idle and the holds of its hand-offs have
ended; :func:`states` shows what is left (``{}`` once the triggers of every stream have ended).

Where task instance states are read is decided here too: the triggerer's supervisor, or a source
a harness sets with :func:`use_task_states`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_sm_callback import _airflow
from airflow_sm_callback.protocol import routing
from airflow_sm_callback.triggers.handoffs import HandOffConfirmer, HandOffLedger, TaskKey, TaskStates

if TYPE_CHECKING:
    from airflow_sm_callback.triggers.desk import StreamDesk
    from airflow_sm_callback.triggers.local import LocalStream

__all__ = [
    "StreamState",
    "join",
    "leave",
    "local_streams",
    "settle",
    "state_of",
    "states",
    "task_states_source",
    "use_local_streams",
    "use_task_states",
]

log = logging.getLogger(__name__)

_STATES: dict[Hashable, StreamState] = {}
_override: list[TaskStates | None] = [None]
_local_override: list[bool | None] = [None]


def use_local_streams(enabled: bool | None) -> bool | None:
    """
    Make single triggers' ``run()`` join this process's shared polls (``None``: decide as
    :func:`local_streams` does), and return the previous setting. For harnesses that run
    triggers below Airflow 3.3 as its triggerer does.
    """
    previous, _local_override[0] = _local_override[0], enabled
    return previous


def local_streams() -> bool:
    """
    Whether a trigger's ``run()`` shares this process's poll of its queue and connection
    (:mod:`.local`): below Airflow 3.3, in a triggerer. From 3.3 the triggerer shares polls
    itself (``filter_shared_stream``), and elsewhere (``airflow dags test``) a trigger polls
    on its own.
    """
    if _local_override[0] is not None:
        return _local_override[0]
    return not _airflow.AIRFLOW_V_3_3_PLUS and _airflow.in_triggerer()


def use_task_states(source: TaskStates | None) -> TaskStates | None:
    """
    Read task instance states from ``source`` in this process instead of from the triggerer's
    supervisor, and return the previous source. For harnesses that run shared streams outside a
    triggerer (:class:`~airflow_sm_callback.testing.triggerer.SharedStreamHarness`).
    """
    previous, _override[0] = _override[0], source
    return previous


def task_states_source() -> TaskStates | None:
    """
    Where this process reads task instance states: the source set with :func:`use_task_states`,
    or in a triggerer its supervisor; ``None`` elsewhere (then a task deletes its own messages).
    """
    if _override[0] is not None:
        return _override[0]
    return _airflow.atask_states if _airflow.in_triggerer() else None


@dataclass(eq=False)
class StreamState:
    """What the triggers of one shared stream share in this process, beyond one poll."""

    key: Hashable
    ledger: HandOffLedger = field(default_factory=HandOffLedger)
    #: How many processes receive from the queue, as this one's streams see it (kept across polls).
    pollers: routing.PollerEstimate = field(default_factory=routing.PollerEstimate)
    confirmer: HandOffConfirmer = field(init=False)
    #: The claim desk of the stream's open producer (``None`` while none is open).
    desk: StreamDesk | None = None
    #: Below Airflow 3.3, the provider's own shared poll of the stream (``None`` while none runs),
    #: and its closing once its last subscriber left.
    local: LocalStream | None = None
    closing: asyncio.Task[None] | None = None
    users: set[int] = field(default_factory=set)
    #: The users that fired their one event (see :meth:`fire`): a fired trigger may sit in its
    #: resume hold, or wait for Airflow to end it, and no batch waits for it meanwhile.
    fired: set[int] = field(default_factory=set)
    #: What the triggers here that may still claim wait for: trigger -> execution ARN, or
    #: ``None`` for any (a watcher, or a wait matched by arguments alone).
    waiting: dict[int, str | None] = field(default_factory=dict)
    _executions: Counter[str] = field(default_factory=Counter, repr=False)
    _any: int = field(default=0, repr=False)
    #: What the fired triggers fired: token -> (trigger, its message ids).
    fired_tokens: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    _someone_waits: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _warming: asyncio.Task[None] | None = field(default=None, repr=False)
    _check: asyncio.TimerHandle | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.confirmer = HandOffConfirmer(
            task_states_source,
            on_idle=lambda: _drop_if_done(self),
            # A released hand-off's messages are back on the queue: its receipt handles are stale,
            # and when one comes here again it is handed back at once (its task waits elsewhere).
            on_release=self.ledger.release,
        )

    def warm(self, owner: TaskKey) -> None:
        """
        Make the stream's first task state look now, in the background, for ``owner``.

        A triggerer's supervisor builds its in-process execution API on the first request that
        needs it (several CPU-seconds, on the supervisor's only thread, which meanwhile writes no
        trigger events). Triggers that load their connection from the metadata database make
        that request when they start; with a connection from an environment variable or a
        secrets backend the first request would otherwise be the confirmer's first look, two
        seconds after a burst of callbacks, on a machine busy starting the resumed tasks. Once
        per stream state, when its first trigger that fires for a task starts waiting.
        """
        if self._warming is not None:
            return
        source = task_states_source()
        if source is None:
            return

        async def look() -> None:
            try:
                await source([owner])
            except Exception as err:
                log.debug("The first task state look failed: %s", err)

        self._warming = asyncio.get_running_loop().create_task(look(), name="sagemaker-callback-warm-states")

    def wait_for(self, user: int, execution_arn: str | None) -> None:
        """``user`` may claim callbacks of ``execution_arn`` (of any execution: ``None``), until it leaves."""
        self.stop_waiting(user)
        self.waiting[user] = execution_arn
        self._update_someone_waits()
        if execution_arn is None:
            self._any += 1
        else:
            self._executions[execution_arn] += 1

    def stop_waiting(self, user: int) -> None:
        """``user`` claims nothing more (it left)."""
        if user not in self.waiting:
            return
        execution_arn = self.waiting.pop(user)
        if execution_arn is None:
            self._any -= 1
        else:
            self._executions[execution_arn] -= 1
            if self._executions[execution_arn] <= 0:
                del self._executions[execution_arn]
        self._update_someone_waits()

    def fire(self, user: int, token: str, message_ids: Iterable[str]) -> None:
        """
        ``user`` fired its one event, for ``token`` from ``message_ids``: batches opened from now
        on do not wait for it to walk them, the stream need not receive for it, and the stream
        claims further copies of the token for it (other message ids) until it leaves.
        """
        self.fired.add(user)
        self.fired_tokens[token] = (user, frozenset(message_ids))
        self._update_someone_waits()

    def copy_claimant(self, token: str, message_ids: Iterable[str]) -> int | None:
        """The fired trigger a further copy of ``token`` (other message ids) belongs to, if any."""
        fired = self.fired_tokens.get(token)
        if fired is None or not fired[1].isdisjoint(message_ids):
            return None
        return fired[0]

    def _update_someone_waits(self) -> None:
        if any(user not in self.fired for user in self.waiting):
            self._someone_waits.set()
        else:
            self._someone_waits.clear()

    @property
    def someone_waits(self) -> bool:
        """Whether a trigger here that has not fired may claim."""
        return self._someone_waits.is_set()

    async def until_someone_waits(self) -> None:
        """Return once a trigger here may claim (at once if one may)."""
        await self._someone_waits.wait()

    def may_want(self, execution_arn: str) -> bool:
        """Whether a trigger here may claim a callback of ``execution_arn``."""
        return self._any > 0 or execution_arn in self._executions

    @property
    def done(self) -> bool:
        """Whether nothing needs this state any more."""
        return (
            not self.users
            and self.local is None
            and (self.closing is None or self.closing.done())
            and self.confirmer.idle
            and self.ledger.kept_until() is None
        )


def join(key: Hashable, user: int) -> StreamState:
    """The state of stream ``key``, used by ``user`` (a trigger or a producer) until :func:`leave`."""
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = StreamState(key)
    state.users.add(user)
    if state._check is not None:
        state._check.cancel()
        state._check = None
    return state


def state_of(key: Hashable) -> StreamState:
    """The state of stream ``key``, made if this process has none (whoever keeps it there must :func:`settle` it)."""
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = StreamState(key)
    return state


def settle(state: StreamState) -> None:
    """Drop ``state`` if nothing needs it any more (something that kept it there has ended)."""
    _drop_if_done(state)


def find(key: Hashable) -> StreamState | None:
    """The state of stream ``key``, if this process has one."""
    return _STATES.get(key)


def leave(state: StreamState, user: int) -> None:
    """``user`` no longer uses ``state``; it is dropped once nothing needs it."""
    state.users.discard(user)
    state.stop_waiting(user)
    if user in state.fired:
        state.fired.discard(user)
        for token in [t for t, (fired_by, _) in state.fired_tokens.items() if fired_by == user]:
            del state.fired_tokens[token]
    _drop_if_done(state)


def _drop_if_done(state: StreamState) -> None:
    if _STATES.get(state.key) is not state or state.users:
        return
    if state.done:
        del _STATES[state.key]
        if state._warming is not None and not state._warming.done():
            state._warming.cancel()
        return
    until = state.ledger.kept_until()
    if until is None or state._check is not None:
        return  # the confirmer calls back once it is idle
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def check() -> None:
        state._check = None
        _drop_if_done(state)

    state._check = loop.call_later(max(0.0, until - time.monotonic()) + 0.1, check)


def states() -> dict[Hashable, Any]:
    """The stream states this process holds, by key (for tests and checks)."""
    return dict(_STATES)
