"""
SageMakerCallbackTrigger: wait for one callback (task deferral) or every callback (AssetWatcher).

Two ways to run, the same guarantees:

* **Shared stream (the triggerer on Airflow 3.3+).** Every trigger on one queue and connection in
  a triggerer shares one poll loop, :class:`CallbackStreamProducer`, in ack mode. The producer
  receives batches, groups messages by token and broadcasts each batch (a :class:`CallbackBatch`)
  to the triggers; each trigger's filter *claims* the deliveries it wants (the first claim wins)
  and yields one event per claim (the claims of one batch register their tokens with the secrets
  masker together: the masker recompiles one regex of every secret per registration). When
  every trigger has moved past a batch and the claimed events are persisted, Airflow calls
  :meth:`CallbackStreamProducer.advance`. A task's claimed messages then stay hidden for the
  trigger's ``handoff_visibility`` and their receipt handles travel in the event: the task
  deletes them in ``execute_complete`` once the callback is in XCom, because Airflow may drop a
  persisted event (it restarts a resumed task from scratch after a startup failure). An
  ``AssetWatcher``'s claimed messages are deleted at once (the asset event is the durable
  hand-off). Messages whose step is known closed, and later copies of a token already handed
  on, are deleted; every other message is handed back. A claim whose outcome is not clean (a
  persist that failed, a trigger that timed out) is handed back at once, never deleted.
* **A task restarted without its event** (or retried, or cleared) defers again; in the same
  triggerer its new trigger takes the hand-off its task was given at once, while the step is
  open (:class:`HandOffLedger`); elsewhere it receives the message again when its
  ``handoff_visibility`` ends, if the message was not deleted yet.
* **Standalone** :meth:`SageMakerCallbackTrigger.run` (``airflow dags test``, or when the
  triggerer cannot share). The trigger polls on its own, keeps the claimed messages hidden for
  ``handoff_visibility`` seconds and puts their receipt handles in the event; the task deletes
  them in ``execute_complete`` after pushing the callback to XCom.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer
from botocore.exceptions import BotoCoreError, ClientError

from airflow_sm_callback.callback import CallbackMatcher, CallbackMessage, UnparsedMessage
from airflow_sm_callback.hooks.callback import (
    SQS_BATCH_SIZE,
    Claim,
    SageMakerCallbackHook,
    backoff_visibility,
)

log = logging.getLogger(__name__)

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

TRANSIENT_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
    }
)


def is_transient(err: BaseException) -> bool:
    """Whether an AWS error is worth waiting out (throttling, 5xx, connection trouble)."""
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500
    return isinstance(err, BotoCoreError | OSError | asyncio.TimeoutError)


def describe_error(err: BaseException) -> str:
    """A one-line description of an AWS error."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    return f"{type(err).__name__}: {err}"


def success_event(
    callback: CallbackMessage,
    queue_url: str,
    receipt_handles: Sequence[str] | None,
    deleted_by: str | None = "task",
) -> dict[str, Any]:
    """
    The payload of the event a trigger fires for a callback.

    For a task's trigger, ``receipt_handles`` are the callback's messages, hidden until they are
    deleted once the callback is in the task's XCom, and ``deleted_by`` says by whom: ``"task"``
    (the task, right after its XCom push) or ``"triggerer"`` (the shared stream, once the task
    instance succeeded; the task deletes them only if it does not take the callback, its step
    being closed already). For an ``AssetWatcher`` on the shared stream both are ``None``: the
    producer deletes the messages once the asset event is persisted.
    """
    return {
        "status": "success",
        "callback": callback.to_dict(),
        "queue_url": queue_url,
        "receipt_handles": list(receipt_handles) if receipt_handles is not None else None,
        "deleted_by": deleted_by if receipt_handles is not None else None,
    }


def timeout_event(deadline: float | None) -> dict[str, Any]:
    """The payload of the event a single-event trigger fires when its deadline passed."""
    return {"status": "timeout", "deadline": deadline}


def error_event(message: str) -> dict[str, Any]:
    """The payload of the event a trigger fires when it cannot wait any longer."""
    return {"status": "error", "message": message}


# ----------------------------------------------------------------------------------------------
# Masking many tokens at once
# ----------------------------------------------------------------------------------------------


def _new_mask_patterns(masker: Any, tokens: Sequence[str]) -> set[str]:
    """
    The patterns ``masker.add_mask(token)`` would add for ``tokens``, without adding them.

    Follows ``SecretsMasker.add_mask`` for a string: skip empty, too short and common values,
    mask every adaptation of the secret.

    :raises AttributeError: when ``masker`` is not the masker this was written for.
    """
    from airflow.sdk._shared.secrets_masker.secrets_masker import SECRETS_TO_SKIP_MASKING

    min_length: int = masker.min_length_to_mask
    known: set[str] = masker.patterns
    new: set[str] = set()
    for token in tokens:
        if not token or token.lower() in SECRETS_TO_SKIP_MASKING or len(token) < min_length:
            continue
        for variant in masker._adaptations(token):
            if variant and len(variant) >= min_length and variant.lower() not in SECRETS_TO_SKIP_MASKING:
                pattern = re.escape(variant)
                if pattern not in known:
                    new.add(pattern)
    return new


def register_tokens(tokens: Sequence[str]) -> None:
    """
    Register many callback tokens with this process's secrets masker, compiling its regex once.

    ``SecretsMasker.add_mask`` recompiles one regular expression of *every* secret known for
    each new secret, so registering N tokens one by one costs O(N^2): about 34 seconds of
    event-loop time for 1,000 tokens. This adds the same patterns and compiles once. With a
    masker it does not know, it falls back to ``add_mask`` per token.
    """
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    masker = _secrets_masker()
    try:
        new = _new_mask_patterns(masker, tokens)
        if not new:
            return
        patterns: set[str] = masker.patterns
        # Compile before publishing, so that a log line never meets a half-updated masker. The
        # parse allocates an object per character: with the cyclic collector on, a large heap
        # (a triggerer's) makes some compiles several times slower; they make no cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            replacer = re.compile("|".join(patterns | new))
        finally:
            if collecting:
                gc.enable()
        patterns.update(new)
        masker.replacer = replacer
    except (AttributeError, ImportError, TypeError):
        for token in tokens:
            masker.add_mask(token)


async def _tell_supervisor(tokens: list[str]) -> None:
    """Pass the tokens to the supervisor's masker, as ``amask_secret`` does (one message for all)."""
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.comms import MaskSecret

        comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
        if comms is not None:
            await comms.asend(MaskSecret(value=list(tokens)))
    except Exception:
        # As amask_secret: outside a task or triggerer process there is no supervisor to tell.
        return


class _TokenMasker:
    """
    Masks the tokens that triggers claim, in batches: the claims made in one turn of the event
    loop (every trigger handling one broadcast batch) share one registration, made before any of
    them yields its event.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._flush: asyncio.Task[None] | None = None

    async def mask(self, token: str) -> None:
        """Return once ``token`` is masked (with the others claimed in the same turn)."""
        self._pending.append(token)
        if self._flush is None:
            # Created now, it runs after every task already scheduled for this turn.
            self._flush = asyncio.create_task(self._run())
        await asyncio.shield(self._flush)

    async def _run(self) -> None:
        tokens, self._pending = self._pending, []
        self._flush = None
        register_tokens(tokens)
        await _tell_supervisor(tokens)


# ----------------------------------------------------------------------------------------------
# Hand-offs to tasks: when a task has its callback
# ----------------------------------------------------------------------------------------------


class TaskKey(NamedTuple):
    """The task instance a callback is handed to."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @property
    def state_key(self) -> str:
        """How ``GetTaskStates`` names this task instance within its DAG run."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}_{self.map_index}"


#: Task instance states in which a task has its callback: the sensor pushed it to XCom before it
#: succeeded, or closed the step itself and skipped (the execution was stopping).
LANDED_STATES: Final = frozenset({"success", "skipped"})

#: Reads the current states of task instances (``None`` for one not found).
TaskStates = Callable[[Sequence[TaskKey]], Awaitable[Mapping[TaskKey, str | None]]]

_task_states: TaskStates | None = None


def use_task_states(source: TaskStates | None) -> TaskStates | None:
    """
    Read task instance states from ``source`` in this process instead of from the triggerer's
    supervisor, and return the previous source. For harnesses that run shared streams outside a
    triggerer (:class:`~airflow_sm_callback.testing.triggerer.SharedStreamHarness`).
    """
    global _task_states
    previous, _task_states = _task_states, source
    return previous


def task_states_source() -> TaskStates | None:
    """
    Where this process reads task instance states: the source set with :func:`use_task_states`,
    or in a triggerer's trigger runner its supervisor (``GetTaskStates``); ``None`` elsewhere.
    """
    if _task_states is not None:
        return _task_states
    runner = sys.modules.get("airflow.jobs.triggerer_job_runner")
    decoder = getattr(runner, "TriggerCommsDecoder", None)
    if decoder is None:
        return None
    from airflow.sdk.execution_time import task_runner

    if isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), decoder):
        return _supervisor_task_states
    return None


#: DAG runs named in one ``GetTaskStates`` request.
STATES_PER_REQUEST: Final = 100


async def _supervisor_task_states(keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
    """Task instance states from the triggerer's supervisor: one ``GetTaskStates`` per DAG and 100 runs."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates

    comms = task_runner.SUPERVISOR_COMMS
    by_dag: dict[str, list[TaskKey]] = {}
    for key in keys:
        by_dag.setdefault(key.dag_id, []).append(key)
    states: dict[TaskKey, str | None] = {}
    for dag_id, dag_keys in by_dag.items():
        runs = sorted({key.run_id for key in dag_keys})
        tasks = sorted({key.task_id for key in dag_keys})
        for start in range(0, len(runs), STATES_PER_REQUEST):
            chunk = set(runs[start : start + STATES_PER_REQUEST])
            response = await comms.asend(GetTaskStates(dag_id=dag_id, run_ids=sorted(chunk), task_ids=tasks))
            found = getattr(response, "task_states", None)
            if not isinstance(found, dict):
                raise RuntimeError(f"unexpected answer to GetTaskStates: {response!r}")
            for key in dag_keys:
                if key.run_id in chunk:
                    states[key] = (found.get(key.run_id) or {}).get(key.state_key)
    return states


#: The background look of :func:`warm_task_states` (one per process, once started).
_warming: list[asyncio.Task[None]] = []


def warm_task_states(owner: TaskKey) -> None:
    """
    Make this process's first ``GetTaskStates`` now, in the background, for ``owner``.

    A triggerer's supervisor builds its in-process execution API on the first request that needs
    it (several CPU-seconds, on the supervisor's only thread, which meanwhile writes no trigger
    events). Triggers that load their connection from the metadata database make that request
    when they start; with a connection from an environment variable or a secrets backend the
    first request would otherwise be the confirmer's first look, two seconds after a burst of
    callbacks, on a machine busy starting the resumed tasks. Once per process, when the first
    trigger of a shared stream starts waiting.
    """
    if _warming:
        return
    source = task_states_source()
    if source is None:
        return

    async def look() -> None:
        try:
            await source([owner])
        except Exception as err:
            log.debug("The first task state look failed: %s", err)

    _warming.append(asyncio.get_running_loop().create_task(look(), name="sagemaker-callback-warm-states"))


@dataclass(eq=False, slots=True)
class _Watch:
    handoff: HandOff
    #: Loop time at which the messages' hold ends (they are visible again).
    until: float
    next_look: float
    gap: float


class HandOffConfirmer:
    """
    Deletes the messages of a stream's hand-offs to tasks once the tasks have their callbacks,
    many at a time (``DeleteMessageBatch``, ten a request).

    A task has its callback once its task instance succeeded (the sensor pushes the callback to
    XCom before it returns) or skipped (it closed the step of a stopping execution). The
    confirmer reads the states of the task instances it waits for (``GetTaskStates``: one
    request per DAG and 100 runs, through the triggerer's supervisor) from 2 seconds after the
    event was persisted, with gaps that double up to 10 seconds, until the messages' hold ends;
    a message that comes back after that is looked at again (:meth:`HandOffLedger.came_back`).
    It runs while there is something to wait for, and outlives the stream's producer (a stream
    stops when its last trigger leaves, before the tasks resume). Nothing is lost when it stops
    early: the messages come back when their hold ends, and are delivered or deleted then.
    """

    FIRST_LOOK: Final = 2.0
    MAX_GAP: Final = 10.0
    TICK: Final = 1.0
    DELETE_ATTEMPTS: Final = 10

    def __init__(self) -> None:
        self._watches: dict[TaskKey, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._queue_url: str | None = None
        self._hook_factory: Callable[[], SageMakerCallbackHook] | None = None
        #: Messages deleted, and ``GetTaskStates`` rounds made (for tests and figures).
        self.deleted = 0
        self.rounds = 0

    def connect(self, queue_url: str, hook_factory: Callable[[], SageMakerCallbackHook]) -> None:
        """The queue, and how to make a hook on the stream's connection (set by the producer)."""
        self._queue_url = queue_url
        self._hook_factory = hook_factory

    @property
    def waiting(self) -> int:
        """Hand-offs whose task has not been seen with its callback yet."""
        return len(self._watches)

    def watch(self, handoff: HandOff, hidden_for: float) -> None:
        """Look at ``handoff``'s task until its messages, hidden for ``hidden_for`` seconds, are visible."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        first = min(self.FIRST_LOOK, max(0.0, hidden_for - 1.0))
        self._watches[handoff.owner] = _Watch(handoff, now + hidden_for, now + first, self.FIRST_LOOK)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="sagemaker-callback-hand-offs")

    def drop(self, owner: TaskKey) -> None:
        """Stop waiting for ``owner`` (its hand-off is forgotten)."""
        self._watches.pop(owner, None)

    async def _run(self) -> None:
        hook: SageMakerCallbackHook | None = None
        #: Messages of landed hand-offs still to delete, with the attempts made.
        deletes: dict[str, int] = {}
        try:
            while self._watches or deletes:
                await asyncio.sleep(self.TICK)
                landed = await self._landed()
                for watch in landed:
                    deletes.update(dict.fromkeys(watch.handoff.receipt_handles, 0))
                if deletes and self._queue_url is not None and self._hook_factory is not None:
                    hook = hook or self._hook_factory()
                    deletes = await self._delete(hook, self._queue_url, deletes)
                # Landed once the first delete was made: a message back from now on is redundant.
                for watch in landed:
                    watch.handoff.landed = True
                    watch.handoff.receipt_handles = []
        finally:
            if hook is not None:
                await hook.aclose()

    async def _landed(self) -> list[_Watch]:
        """Look at the tasks due for a look; return the watches of those that have their callbacks."""
        now = asyncio.get_running_loop().time()
        due = [w for w in self._watches.values() if w.next_look <= now]
        source = task_states_source()
        if not due or source is None:
            return []
        self.rounds += 1
        try:
            states = await source([w.handoff.owner for w in due])
        except Exception as err:
            log.warning("Reading the states of %d waiting tasks failed: %s", len(due), err)
            states = {}
        landed: list[_Watch] = []
        for watch in due:
            owner = watch.handoff.owner
            if self._watches.get(owner) is not watch:
                continue  # watched again meanwhile
            if states.get(owner) in LANDED_STATES:
                landed.append(watch)
                del self._watches[owner]
            elif now >= watch.until:
                del self._watches[owner]  # visible again: looked at when it comes back
            else:
                watch.gap = min(self.MAX_GAP, watch.gap * 2)
                watch.next_look = min(now + watch.gap, watch.until)
        return landed

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
            result = await hook.delete_messages_async(queue_url, handles)
        except Exception as err:
            log.warning("Deleting %d handed-on messages failed: %s", len(handles), describe_error(err))
            again = set(handles) if is_transient(err) else set()
        else:
            self.deleted += len(result.succeeded)
            if result.succeeded:
                log.info("Deleted %d messages of callbacks whose tasks have them", len(result.succeeded))
            again = {h for h, code, _ in result.failed if code in TRANSIENT_CODES}
        return {h: deletes[h] + 1 for h in again if deletes[h] + 1 < self.DELETE_ATTEMPTS}


# ----------------------------------------------------------------------------------------------
# Shared stream: the raw events and the producer
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Delivery:
    """
    Every message of one token in a :class:`CallbackBatch` (usually one; two when the
    ``Executing`` and ``Stopping`` messages, or duplicates, came together).
    """

    callback: CallbackMessage
    receipt_handles: list[str]
    receive_count: int
    message_ids: list[str] = field(default_factory=list)
    claimed_by: int | None = None
    #: Set by the claimer: seconds the messages stay hidden once the event is persisted, until
    #: they are deleted after the hand-off; ``None`` deletes them then (an ``AssetWatcher``'s
    #: asset event).
    hold: int | None = None
    #: The task instance the claim is handed to (see :class:`HandOffLedger`).
    owner: TaskKey | None = None
    #: Who deletes the messages of a task's claim once the task has the callback in XCom:
    #: ``"triggerer"`` (the stream's :class:`HandOffConfirmer`, in batches) or ``"task"``.
    deleted_by: str = "task"
    #: Claimed as a further copy of a callback its claimer fired from an earlier batch: deleted
    #: when the batch is done, but it does not count as the hand-off of the token.
    copy: bool = False


@dataclass(eq=False, slots=True)
class CallbackBatch:
    """One raw event of the shared stream: the callbacks of one or more receives."""

    id: int
    deliveries: list[Delivery]
    invalid: list[UnparsedMessage]
    router: _Router
    #: Receipt handles of further copies of tokens already handed on (other message ids): deleted.
    redundant: list[str] = field(default_factory=list)
    received_at: float = field(default_factory=time.monotonic)
    _by_execution: dict[str, list[Delivery]] | None = field(default=None, repr=False)

    def for_execution(self, execution_arn: str) -> Sequence[Delivery]:
        """
        The deliveries of one pipeline execution.

        Every trigger sees every batch; one that waits for a single execution looks its
        deliveries up here instead of scanning the batch (the index is built once per batch).
        """
        if self._by_execution is None:
            index: dict[str, list[Delivery]] = {}
            for delivery in self.deliveries:
                index.setdefault(delivery.callback.pipeline_execution_arn, []).append(delivery)
            self._by_execution = index
        return self._by_execution.get(execution_arn, ())

    def claim(self, delivery: Delivery, claimer: int) -> bool:
        """Claim ``delivery`` for ``claimer``; only the first claim wins."""
        if delivery.claimed_by is not None:
            return False
        delivery.claimed_by = claimer
        return True


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


class HandOffLedger:
    """
    What the shared streams of one process on one queue and connection handed on.

    * **Tokens** (the last ``max_tokens``) with the message ids that carried them: a later
      message of such a token with another id is a copy (SQS delivers at least once; the
      ``Stopping`` message follows the ``Executing`` one), deleted; the original itself may
      come back (its task is slow, or was restarted) and is never taken for a copy, unless its
      task has already landed the hand-off.
    * **Hand-offs** to tasks (the last ``max_owners``), by task instance: Airflow restarts a
      resumed task from scratch when it cannot start it (the DAG file failed to import, for
      example), dropping the event, and a retried or cleared task starts with its XCom cleared;
      the task defers again, and its new trigger takes its hand-off from here at once, instead
      of waiting for a message that is hidden, or already deleted. Each time, while the step
      is open: a hand-off whose step is closed is forgotten.
    * Its :class:`HandOffConfirmer`, which deletes the messages of hand-offs that landed.

    It outlives the producer (a stream stops when its last trigger leaves), not the process.
    """

    def __init__(self, max_tokens: int = 50_000, max_owners: int = 10_000) -> None:
        self._tokens: OrderedDict[str, tuple[frozenset[str], TaskKey | None]] = OrderedDict()
        self._handoffs: OrderedDict[TaskKey, HandOff] = OrderedDict()
        self._max_tokens = max_tokens
        self._max_owners = max_owners
        self.confirmer = HandOffConfirmer()

    def record(self, delivery: Delivery) -> HandOff | None:
        """Remember a claim whose event was persisted; returns the hand-off to a task, if it is one."""
        token = delivery.callback.token
        self._tokens[token] = (frozenset(delivery.message_ids), delivery.owner)
        self._tokens.move_to_end(token)
        if len(self._tokens) > self._max_tokens:
            self._tokens.popitem(last=False)
        if delivery.owner is None or delivery.hold is None:
            return None
        handoff = HandOff(
            delivery.callback,
            list(delivery.receipt_handles),
            frozenset(delivery.message_ids),
            delivery.owner,
            delivery.deleted_by,
        )
        self._handoffs[delivery.owner] = handoff
        self._handoffs.move_to_end(delivery.owner)
        if len(self._handoffs) > self._max_owners:
            _, evicted = self._handoffs.popitem(last=False)
            self.confirmer.drop(evicted.owner)
        return handoff

    def handed_on(self, token: str) -> bool:
        """Whether the token was handed on through this process's stream."""
        return token in self._tokens

    def is_copy(self, token: str, message_id: str | None) -> bool:
        """Whether a message is a further copy of a token handed on (not its original message)."""
        known = self._tokens.get(token)
        return known is not None and message_id is not None and message_id not in known[0]

    def _handoff_of(self, token: str) -> HandOff | None:
        known = self._tokens.get(token)
        handoff = self._handoffs.get(known[1]) if known and known[1] else None
        return handoff if handoff is not None and handoff.callback.token == token else None

    def landed(self, token: str) -> bool:
        """Whether the token's task has the callback and its messages were deleted (so any back are redundant)."""
        handoff = self._handoff_of(token)
        return handoff is not None and handoff.landed

    def came_back(self, token: str, receipt_handles: Sequence[str], hidden_for: int) -> None:
        """
        The original message of a hand-off was received again (its task is slow, restarted, or
        was retried): its new receipt handles, and for a hand-off the confirmer deletes, a new
        look at its task before the message is visible again (``hidden_for`` seconds).
        """
        handoff = self._handoff_of(token)
        if handoff is None:
            return
        handoff.receipt_handles = list(receipt_handles)
        if handoff.deleted_by == "triggerer" and not handoff.landed:
            self.confirmer.watch(handoff, hidden_for)

    def get(self, owner: TaskKey) -> HandOff | None:
        """The hand-off given to ``owner`` (kept: the task may start again, until its step is closed)."""
        return self._handoffs.get(owner)

    def forget(self, owner: TaskKey) -> None:
        """Forget the hand-off given to ``owner`` (its step is closed)."""
        self._handoffs.pop(owner, None)
        self.confirmer.drop(owner)


#: One ledger per shared stream key, for the life of the process (the triggerer's trigger runner).
_LEDGERS: dict[Hashable, HandOffLedger] = {}
#: The router of each shared stream that is open in this process.
_ROUTERS: dict[Hashable, _Router] = {}


def stream_key(
    queue_url: str,
    aws_conn_id: str | None,
    region_name: str | None,
    verify: bool | str | None,
    botocore_config: dict[str, Any] | None,
) -> Hashable:
    """The key of the shared stream of one queue and connection."""
    return (
        "airflow_sm_callback",
        queue_url,
        aws_conn_id,
        region_name,
        json.dumps(verify),
        json.dumps(botocore_config, sort_keys=True, default=str),
    )


def ledger_for(key: Hashable) -> HandOffLedger:
    """The hand-off ledger of a shared stream key in this process."""
    ledger = _LEDGERS.get(key)
    if ledger is None:
        ledger = _LEDGERS[key] = HandOffLedger()
    return ledger


class _Router:
    """
    What the triggers of one shared stream share: one hook (one pair of async clients), the
    step directory, a ledger of tokens handed on, and single-flight step look-ups.
    """

    def __init__(
        self,
        hook: SageMakerCallbackHook,
        queue_url: str,
        *,
        ledger: HandOffLedger | None = None,
        lookup_concurrency: int = 4,
    ) -> None:
        self.hook = hook
        self.queue_url = queue_url
        self.ledger = ledger if ledger is not None else HandOffLedger()
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._lookup_slots = asyncio.Semaphore(lookup_concurrency)
        self._masker = _TokenMasker()

    async def mask(self, token: str) -> None:
        """Register a claimed token with the secrets masker (batched with the other claims)."""
        await self._masker.mask(token)

    def handed_on(self, token: str) -> bool:
        """Whether the token was already handed on through this process's stream."""
        return self.ledger.handed_on(token)

    async def lookup(self, execution_arn: str) -> None:
        """Refresh the step directory from one listing of ``execution_arn`` (single-flight)."""
        task = self._lookups.get(execution_arn)
        if task is None:
            task = asyncio.create_task(self._lookup(execution_arn))
            self._lookups[execution_arn] = task
            task.add_done_callback(lambda _: self._lookups.pop(execution_arn, None))
        await asyncio.shield(task)

    async def _lookup(self, execution_arn: str) -> None:
        async with self._lookup_slots:
            try:
                await self.hook._run_async(self.hook._lookup_op(execution_arn))
            except Exception as err:
                self.hook.log.info("Step look-up of %s failed: %s", execution_arn, describe_error(err))

    def lookup_later(self, execution_arn: str) -> None:
        """Start a look-up in the background (its answer serves the message's next delivery)."""
        if execution_arn not in self._lookups:
            task = asyncio.create_task(self._lookup(execution_arn))
            self._lookups[execution_arn] = task
            task.add_done_callback(lambda _: self._lookups.pop(execution_arn, None))

    async def step_name(self, callback: CallbackMessage) -> str | None:
        """The step name of a callback's token (one look-up per execution, cached)."""
        state = self.hook.steps.get(callback.token)
        if state is None:
            await self.lookup(callback.pipeline_execution_arn)
            state = self.hook.steps.get(callback.token)
        return state.name if state else None

    def step_closed(self, token: str) -> bool:
        state = self.hook.steps.get(token)
        return state is not None and state.closed

    async def aclose(self) -> None:
        for task in list(self._lookups.values()):
            task.cancel()
        await self.hook.aclose()


class CallbackStreamProducer(SharedStreamProducer):
    """
    The one poll loop of a shared stream (ack mode): receive, broadcast, and advance the queue.

    One 20-second long poll at a time while the queue is idle; when a receive comes back full,
    eight receivers at once drain the burst. Receiving runs beside broadcasting: a batch holds
    what arrived since the previous one (while a burst is drained, what arrives within 0.1 s,
    at most 200 messages), since each batch wakes every trigger on the stream and updates the
    secrets masker once whatever its size. Messages stay hidden while the triggers decide
    (their visibility is extended after 10 seconds). In :meth:`advance`, the claimed messages
    of a task whose event was persisted stay hidden for its ``handoff_visibility`` (the task
    deletes them), those of an ``AssetWatcher`` are deleted (``DeleteMessageBatch``); messages
    whose step is closed, and further copies of a token already handed on, are deleted; every
    other message is handed back (``ChangeMessageVisibilityBatch``), at once the first time and
    with a growing delay after. Malformed and foreign messages are never deleted.
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.queue_url: str = kwargs["queue_url"]
        self._ids = itertools.count()
        self._inflight: dict[int, CallbackBatch] = {}
        self._router: _Router | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._received: asyncio.Queue[Any] | None = None
        self._draining = False
        #: Orders the heartbeat's visibility changes with the advances' (a hold set in advance()
        #: must not be overwritten by a heartbeat request still under way).
        self._visibility = asyncio.Lock()

    @property
    def router(self) -> _Router:
        if self._router is None:
            raise RuntimeError("the shared stream is not open")
        return self._router

    def _hook(self) -> SageMakerCallbackHook:
        return SageMakerCallbackHook(
            aws_conn_id=self.kwargs.get("aws_conn_id"),
            region_name=self.kwargs.get("region_name"),
            verify=self.kwargs.get("verify"),
            config=self.kwargs.get("botocore_config"),
        )

    def _stream_key(self) -> Hashable:
        kwargs = self.kwargs
        return stream_key(
            self.queue_url,
            kwargs.get("aws_conn_id"),
            kwargs.get("region_name"),
            kwargs.get("verify"),
            kwargs.get("botocore_config"),
        )

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        key = self._stream_key()
        ledger = ledger_for(key)
        ledger.confirmer.connect(self.queue_url, self._hook)
        self._router = _Router(self._hook(), self.queue_url, ledger=ledger)
        _ROUTERS[key] = self._router
        self._heartbeat = asyncio.create_task(self._keep_hidden())
        self._received = asyncio.Queue(maxsize=MAX_PENDING_RECEIVES)
        self._receiver = asyncio.create_task(self._receive_loop(self._received))
        try:
            while True:
                results = await self._collect(self._received)
                received = [r for r in results if not isinstance(r, BaseException) and len(r)]
                if received:
                    batch = self._batch(received)
                    self._inflight[batch.id] = batch
                    yield batch, batch
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
                self.router.hook.log.warning(
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
        A receive came back full: ``BURST_RECEIVES`` receivers at once, each receiving without
        waiting until one of its receives comes back short.
        """

        async def receiver() -> None:
            while True:
                result = await self._receive(wait_time_seconds=0)
                await out.put(result)
                if len(result) < SQS_BATCH_SIZE:
                    return

        outcomes = await asyncio.gather(*(receiver() for _ in range(BURST_RECEIVES)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise next((f for f in failures if not is_transient(f)), failures[0])

    async def _receive(self, *, wait_time_seconds: int) -> Any:
        return await self.router.hook.receive_callbacks_async(
            self.queue_url, wait_time_seconds=wait_time_seconds, visibility_timeout=RECEIVE_VISIBILITY
        )

    def _batch(self, received: list[Any]) -> CallbackBatch:
        router = self.router
        ledger = router.ledger
        by_token: dict[str, Delivery] = {}
        invalid: list[UnparsedMessage] = []
        redundant: list[str] = []
        for result in received:
            for bad in result.invalid:
                router.hook.warn_invalid(bad, self.queue_url)
                invalid.append(bad)
            for callback in result.callbacks:
                if ledger.is_copy(callback.token, callback.message_id):
                    if callback.receipt_handle:
                        redundant.append(callback.receipt_handle)
                    continue
                delivery = by_token.get(callback.token)
                if delivery is None:
                    by_token[callback.token] = Delivery(
                        callback=callback,
                        receipt_handles=[callback.receipt_handle] if callback.receipt_handle else [],
                        receive_count=callback.receive_count,
                        message_ids=[callback.message_id] if callback.message_id else [],
                    )
                    continue
                if callback.receipt_handle and callback.receipt_handle not in delivery.receipt_handles:
                    delivery.receipt_handles.append(callback.receipt_handle)
                if callback.message_id and callback.message_id not in delivery.message_ids:
                    delivery.message_ids.append(callback.message_id)
                delivery.receive_count = max(delivery.receive_count, callback.receive_count)
                if callback.is_stopping and not delivery.callback.is_stopping:
                    delivery.callback = callback
        return CallbackBatch(
            id=next(self._ids),
            deliveries=list(by_token.values()),
            invalid=invalid,
            router=router,
            redundant=redundant,
        )

    def get_advance_lane(self, broker_payload: Any) -> Hashable:
        # One lane per batch: a batch waiting for a persist never holds back the others.
        return broker_payload.id

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        router = self.router
        deletes: list[str] = []
        releases: list[tuple[str, int]] = []
        for item in batch:
            raw: CallbackBatch = item.broker_payload
            self._inflight.pop(raw.id, None)
            for delivery in raw.deliveries:
                token = delivery.callback.token
                if delivery.claimed_by is not None:
                    if not item.outcome.is_clean:
                        releases.extend((h, 0) for h in delivery.receipt_handles)
                    elif delivery.copy or delivery.hold is None:
                        if not delivery.copy:
                            router.ledger.record(delivery)
                        deletes.extend(delivery.receipt_handles)
                    else:
                        # Hidden until the callback is in the task's XCom; then the task, or
                        # the confirmer once the task instance succeeded, deletes them.
                        handoff = router.ledger.record(delivery)
                        releases.extend((h, delivery.hold) for h in delivery.receipt_handles)
                        if handoff is not None and handoff.deleted_by == "triggerer":
                            router.ledger.confirmer.watch(handoff, delivery.hold)
                elif router.step_closed(token) or router.ledger.landed(token):
                    deletes.extend(delivery.receipt_handles)
                else:
                    delay = backoff_visibility(delivery.receive_count)
                    if router.handed_on(token):
                        # The original of a hand-off came back: its task is slow, or was
                        # restarted and waits for it (here or in another triggerer).
                        router.ledger.came_back(token, delivery.receipt_handles, delay)
                    releases.extend((h, delay) for h in delivery.receipt_handles)
                    if delivery.receive_count >= 2 and not router.hook.steps.is_fresh(token):
                        router.lookup_later(delivery.callback.pipeline_execution_arn)
            deletes.extend(raw.redundant)
            releases.extend(
                (bad.receipt_handle, backoff_visibility(bad.receive_count))
                for bad in raw.invalid
                if bad.receipt_handle
            )
        await self._apply(deletes, releases)

    async def _apply(self, deletes: list[str], releases: list[tuple[str, int]]) -> None:
        hook = self.router.hook
        # A batch call fails whole when a receipt handle appears twice in it.
        deletes = list(dict.fromkeys(deletes))
        deleting = set(deletes)
        releases = [(h, delay) for h, delay in dict(releases).items() if h not in deleting]
        async with self._visibility:
            try:
                if deletes:
                    await hook.delete_messages_async(self.queue_url, deletes)
                if releases:
                    await hook.change_visibility_async(self.queue_url, releases)
            except Exception as err:
                # Nothing is lost: undeleted messages come back when their visibility runs out.
                hook.log.warning("Advancing %s failed: %s", self.queue_url, describe_error(err))

    async def _keep_hidden(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_AFTER / 2)
            async with self._visibility:
                now = time.monotonic()
                entries = [
                    (handle, RECEIVE_VISIBILITY)
                    for raw in list(self._inflight.values())
                    if now - raw.received_at > HEARTBEAT_AFTER
                    for delivery in raw.deliveries
                    for handle in delivery.receipt_handles
                ]
                if not entries:
                    continue
                try:
                    await self.router.hook.change_visibility_async(self.queue_url, entries)
                except Exception as err:
                    self.router.hook.log.warning("Extending visibility failed: %s", describe_error(err))

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
        if self._router is None:
            return
        # Receives never broadcast, and batches never advanced (the stream stopped first), go
        # back to the queue at once.
        left = []
        while self._received is not None and not self._received.empty():
            result = self._received.get_nowait()
            if not isinstance(result, BaseException) and len(result):
                left.append(result)
        if left:
            batch = self._batch(left)
            self._inflight[batch.id] = batch
        handles = [
            handle
            for raw in self._inflight.values()
            for delivery in raw.deliveries
            for handle in delivery.receipt_handles
        ] + [
            bad.receipt_handle for raw in self._inflight.values() for bad in raw.invalid if bad.receipt_handle
        ]
        self._inflight.clear()
        key = self._stream_key()
        if _ROUTERS.get(key) is self._router:
            del _ROUTERS[key]
        try:
            if handles:
                await self._apply([], [(handle, 0) for handle in handles])
        finally:
            await self._router.aclose()


# ----------------------------------------------------------------------------------------------
# The trigger
# ----------------------------------------------------------------------------------------------


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
    :param matcher: which callbacks to take: a :class:`~airflow_sm_callback.callback.CallbackMatcher`
        or its ``to_dict()``.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: Whether to verify SSL certificates.
    :param botocore_config: botocore ``Config`` kwargs.
    :param wait_time_seconds: long-poll time of the standalone path (the shared stream always
        long-polls 20 seconds).
    :param handoff_visibility: seconds a claimed message stays hidden once this trigger fired
        for a task, until the task deletes it (the standalone path; and the shared stream, from
        the event's persist on). An ``AssetWatcher``'s messages are deleted once its asset event
        is persisted.
    :param single_event: fire once and stop (task deferral). Default: once when the trigger
        belongs to a task instance, every callback otherwise (``AssetWatcher``).
    :param deadline: a UNIX time at which a single-event trigger stops waiting and fires a
        ``timeout`` event (so the task can close the step); ``None`` waits without end.
    :param not_before: a UNIX time before which a single-event trigger does not fire: a callback
        claimed earlier is held (hidden on the queue) until then. The sensor sets it a few
        seconds after it defers, so that the scheduler has seen the deferring process end before
        the task resumes (see :data:`~airflow_sm_callback.sensors.callback.RESUME_HOLD`).
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
        self.matcher = matcher if isinstance(matcher, CallbackMatcher) else CallbackMatcher.from_dict(matcher)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config
        self.wait_time_seconds = wait_time_seconds
        self.handoff_visibility = handoff_visibility
        self.single_event = single_event
        self.deadline = deadline
        self.not_before = not_before
        self._emitted: set[str] = set()
        #: Message ids of the callbacks this trigger fired (a copy has another id).
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

    def _owner(self) -> TaskKey | None:
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

    async def _hold(self) -> None:
        """Before a single-event trigger fires: wait until ``not_before``."""
        if self.not_before is None or not self.fires_once:
            return
        delay = self.not_before - time.time()
        if delay > 0:
            self.log.info("Callback claimed; resuming the task in %.1fs", delay)
            await asyncio.sleep(delay)

    def hook(self) -> SageMakerCallbackHook:
        """A hook on this trigger's connection (for the standalone path)."""
        return SageMakerCallbackHook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    # -- standalone -----------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        errors = 0
        try:
            while True:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    yield TriggerEvent(timeout_event(self.deadline))
                    return
                wait = (
                    self.wait_time_seconds
                    if remaining is None
                    else max(0, min(self.wait_time_seconds, int(remaining)))
                )
                try:
                    claim: Claim | None = await hook.poll_for_callback_async(
                        self.queue_url,
                        self.matcher,
                        wait_time_seconds=wait,
                        handoff_visibility=self.handoff_visibility,
                    )
                except Exception as err:
                    if not is_transient(err):
                        message = f"cannot wait for callbacks on {self.queue_url}: {describe_error(err)}"
                        if not self.fires_once:
                            raise RuntimeError(message) from err
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
                if claim is None:
                    continue
                if claim.callback.token in self._emitted:
                    # A copy of a callback this watcher already fired, or its message back after
                    # a delete that failed: the asset event has it.
                    await self._delete_quietly(hook, claim.receipt_handles)
                    continue
                await hook.mask_async(claim.callback.token)
                self.log.info("Callback for %s arrived", claim.callback.pipeline_execution_arn)
                self._emitted.add(claim.callback.token)
                await self._hold()
                yield TriggerEvent(
                    success_event(
                        claim.callback,
                        self.queue_url,
                        claim.receipt_handles,
                        deleted_by="task" if self.fires_once else "triggerer",
                    )
                )
                if self.fires_once:
                    return
                # An AssetWatcher resumed us: the runner has taken the event; delete its messages.
                await self._delete_quietly(hook, claim.receipt_handles)
        finally:
            await hook.aclose()

    async def _delete_quietly(self, hook: SageMakerCallbackHook, receipt_handles: Sequence[str]) -> None:
        """Delete messages already handed on; a failure leaves them to come back as stale."""
        try:
            await hook.complete_handoff_async(self.queue_url, receipt_handles)
        except Exception as err:
            self.log.warning("Deleting handed-on messages failed: %s", describe_error(err))

    # -- shared stream --------------------------------------------------------------------------

    def _claim_copies(self, batch: CallbackBatch, deliveries: Sequence[Delivery], me: int) -> None:
        """
        Claim further copies of callbacks this trigger already fired (SQS delivers at least once,
        and a pipeline may send a token twice), so that the stream deletes them. The first copy
        stays on the queue until its event is persisted, so nothing is lost if that fails.
        """
        for delivery in deliveries:
            if (
                delivery.callback.token in self._emitted
                and self._fired_ids.isdisjoint(delivery.message_ids)
                and batch.claim(delivery, me)
            ):
                delivery.copy = True

    def _fired(self, callback: CallbackMessage, message_ids: Iterable[str]) -> None:
        self._emitted.add(callback.token)
        self._fired_ids.update(message_ids)

    async def _taken_again(self) -> HandOff | None:
        """
        The hand-off this trigger's task was already given through this process's stream, when
        the task was restarted without its event and deferred again (see :class:`HandOffLedger`).
        """
        owner = self._owner()
        ledger = _LEDGERS.get(self.shared_stream_key()) if owner is not None else None
        handoff = ledger.get(owner) if ledger is not None and owner is not None else None
        if ledger is None or owner is None or handoff is None:
            return None
        callback = handoff.callback
        if not self.matcher.matches(callback, step_name=callback.step_name):
            return None
        # A stale hand-off (the task had it and its step is closed now) is not taken again.
        if await self._step_closed(callback):
            ledger.forget(owner)
            return None
        router = _ROUTERS.get(self.shared_stream_key())
        if router is not None:
            await router.mask(callback.token)
        else:
            register_tokens([callback.token])
            await _tell_supervisor([callback.token])
        if handoff.deleted_by == "triggerer" and not handoff.landed:
            ledger.confirmer.watch(handoff, self.handoff_visibility)
        return handoff

    async def _step_closed(self, callback: CallbackMessage) -> bool:
        """Whether the callback's step is closed (``False`` when that cannot be told)."""
        router = _ROUTERS.get(self.shared_stream_key())
        if router is not None:
            await router.lookup(callback.pipeline_execution_arn)
            return router.step_closed(callback.token)
        hook = self.hook()
        try:
            step = await hook.find_callback_step_async(callback.pipeline_execution_arn, token=callback.token)
        except Exception as err:
            self.log.info(
                "Step look-up of %s failed: %s", callback.pipeline_execution_arn, describe_error(err)
            )
            return False
        finally:
            await hook.aclose()
        return step is not None and step.is_closed

    def shared_stream_key(self) -> Hashable | None:
        return stream_key(
            self.queue_url, self.aws_conn_id, self.region_name, self.verify, self.botocore_config
        )

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return CallbackStreamProducer(kwargs)

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        once = self.fires_once
        fired = False
        me = id(self)
        matcher = self.matcher
        execution = matcher.pipeline_execution_arn
        stream = aiter(shared_stream)
        loop = asyncio.get_running_loop()
        remaining = self._remaining()
        until = None if remaining is None else loop.time() + remaining
        owner = self._owner()  # None unless it fires once, for a task
        if owner is not None:
            warm_task_states(owner)
        try:
            if once and (handoff := await self._taken_again()) is not None:
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
                # Keep moving past batches after firing (a batch resolves only when every
                # trigger has moved past it), taking further copies of what this trigger fired.
                if fired:
                    self._claim_copies(batch, candidates, me)
                    continue
                for delivery in candidates:
                    if delivery.claimed_by is not None:
                        continue
                    callback = delivery.callback
                    if callback.token in self._emitted:
                        self._claim_copies(batch, [delivery], me)
                        continue
                    if not matcher.matches_message(callback):
                        continue
                    if matcher.needs_step_name:
                        step_name = await batch.router.step_name(callback)
                        if not matcher.matches(callback, step_name=step_name):
                            continue
                        callback = callback.with_step_name(step_name)
                    if batch.router.step_closed(callback.token) or not batch.claim(delivery, me):
                        continue
                    if once:
                        delivery.hold = self.handoff_visibility
                        delivery.owner = owner
                        if delivery.owner is not None and task_states_source() is not None:
                            delivery.deleted_by = "triggerer"
                    self._fired(callback, delivery.message_ids)
                    await batch.router.mask(callback.token)
                    self.log.info("Callback for %s arrived", callback.pipeline_execution_arn)
                    await self._hold()
                    handles = list(delivery.receipt_handles) if once else None
                    yield TriggerEvent(
                        success_event(callback, batch.router.queue_url, handles, delivery.deleted_by)
                    )
                    if once:
                        fired = True
                        break
        except Exception as err:
            if not once or fired:
                raise
            yield TriggerEvent(error_event(f"the shared poll of {self.queue_url} failed: {err}"))


__all__ = [
    "CallbackBatch",
    "CallbackStreamProducer",
    "Delivery",
    "HandOff",
    "HandOffConfirmer",
    "HandOffLedger",
    "SageMakerCallbackTrigger",
    "TaskKey",
    "error_event",
    "success_event",
    "task_states_source",
    "timeout_event",
    "use_task_states",
]
