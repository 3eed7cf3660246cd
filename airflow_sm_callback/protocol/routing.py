"""
The routing policy: what becomes of each message received from a queue that many waiters share.

One policy, two callers: the hook's standalone poll (a sensor that pokes, or a trigger polling on
its own) and the shared stream (one poll loop for every trigger of a queue in a triggerer). It is
pure: it reads what the caller knows (step states, hand-offs) through :class:`Knowledge` and
returns decisions; the callers make the requests.

For the messages of one token in one receive (a :class:`Delivery`):

========================================================  ===========================================
what                                                      decision
========================================================  ===========================================
claimed for a task                                        ``HOLD``: hidden for the claim's hold, until
                                                          deleted once the callback is in the task
claimed for an asset event (no hold), hand-off durable    ``DELETE`` (handed on)
claimed as a further copy of a token its claimer fired    ``DELETE`` (copy); never counts as the
                                                          token's hand-off
claimed, but the hand-off failed (not persisted)          ``HAND_BACK`` at once
not claimed, its step known to be closed                  ``DELETE`` (stale)
not claimed, its token's task already has the callback    ``DELETE`` (landed)
a further copy of a token handed on (another message id)  ``DELETE`` (copy), apart in :func:`sort`
not claimed, its hand-off here released (task restarted)  ``HAND_BACK`` at once (a while)
not claimed otherwise                                     ``HAND_BACK`` with :func:`backoff_visibility`
malformed or foreign                                      ``HAND_BACK`` with backoff; never deleted
========================================================  ===========================================

A hand-back is immediate while the message may still reach a waiter in another process: for as
many receives as :func:`hot_receives` says for the number of pollers the caller estimates
(:class:`PollerEstimate`, from the receive counts), and at most :data:`HOT_SECONDS` after its
first receive; then delayed more each time: as long as the message has been around, when its
first receive time is known (a clock every poller shares, so that pollers whose estimates differ
agree), else by its receive count.

A message that comes back unwanted once it has surely met every poller (a second time, with one
poller), whose step state is not fresh, asks for a step look-up (:attr:`Decision.lookup`): the standalone poll makes it at once (within a budget), the
shared stream in the background for the message's next delivery.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from airflow_sm_callback.protocol.matching import CallbackMatcher
    from airflow_sm_callback.protocol.message import CallbackMessage, ReceivedMessages, UnparsedMessage

__all__ = [
    "Claim",
    "Decision",
    "Delivery",
    "HandOffKnowledge",
    "Knowledge",
    "NoHandOffs",
    "PollerEstimate",
    "Reason",
    "Sorted",
    "StepKnowledge",
    "Verdict",
    "Want",
    "backoff_visibility",
    "decide",
    "decide_invalid",
    "hot_receives",
    "sort",
    "visibility_changes",
    "wants",
]


#: The chance, at most, that a message some waiter wants has not reached it when its hand-backs
#: start to be delayed (see :func:`hot_receives`). Small, because :class:`PollerEstimate` reads
#: low while callbacks are being claimed (the claimed ones stop being received).
MISS_CHANCE: Final = 0.0001
#: The most receives a message is handed back at once, however many pollers there seem to be.
MAX_HOT_RECEIVES: Final = 100
#: Seconds a poller takes others to be there after it last saw one of them receive (see
#: :attr:`PollerEstimate.others_seen`).
OTHERS_MEMORY: Final = 600.0
#: Seconds after its first receive past which a message nobody wants is no longer handed back at
#: once, whatever the receive counts say: by then it has met every poller (a hand-back at once
#: comes back within a second or two), and pollers whose estimates differ would otherwise keep
#: restarting its immediate hand-backs.
HOT_SECONDS: Final = 30.0


def hot_receives(pollers: float) -> int:
    """
    How many receives of a message nobody here wants are handed back at once.

    With ``pollers`` processes receiving from the queue (each a triggerer's shared stream, or a
    poke), a message lands on a random one each time: after ``r`` receives, the one whose waiter
    wants it has not had it with chance ``(1 - 1/pollers) ** r``. So a message is handed back at
    once until that chance is below :data:`MISS_CHANCE` (1 receive for one poller, 14 for two,
    33 for four, 69 for eight); only then is nobody taken to want it (yet).
    """
    if pollers < 1.05:
        return 1
    return min(MAX_HOT_RECEIVES, math.ceil(math.log(MISS_CHANCE) / math.log(1.0 - 1.0 / pollers)))


def backoff_visibility(
    receive_count: int,
    *,
    pollers: float = 1.0,
    first_here: bool = False,
    cap: int = 60,
    age: float | None = None,
) -> int:
    """
    Visibility timeout for handing back a message nobody here wants.

    Immediate the first time this poller sees it (``first_here``) and for the first
    :func:`hot_receives` receives (another waiter, perhaps in another process, may want it);
    later hand-backs grow (1, 2, 4, ... seconds, at most ``cap``) so a message that nobody
    wants yet does not cycle. With one poller: at once, then 1, 2, 4 ...

    :param age: seconds since the message's first receive, when known. Then the immediate
        hand-backs end :data:`HOT_SECONDS` after it at the latest, and a later hand-back lasts
        as long as the message has been around (plus one second): the same doubling as by
        receive count with one poller, but the same whichever poller receives it.
    """
    if first_here:
        return 0
    hot = hot_receives(pollers)
    if receive_count <= hot and (age is None or age < HOT_SECONDS):
        return 0
    if age is None:
        return int(min(cap, 2 ** min(receive_count - hot - 1, 16)))
    return int(min(cap, max(1, int(age) + 1)))


class PollerEstimate:
    """
    How many processes receive from the queue, as one of them can tell from SQS's receive counts.

    A message handed back is received next by any of the ``k`` pollers. So when this poller
    receives a message for the ``m``-th time and its receive count is ``r``, ``r / m`` is about
    ``k`` (a little less at small ``m``: the first receive of a new message is this poller's own).
    The estimate is the mean of those ratios over the messages received here again, a moving
    average after the first ``settle`` samples, so it follows triggerers that start and stop,
    with no setting and no look at Airflow. It starts at 1, what one poller alone sees (every
    receive is its own). A first sighting gives no sample (in a burst of new messages every
    poller sights most of them first at count 1), nor does a message sent before the estimate
    started (a restarted triggerer finds those received many times by its former self).
    """

    def __init__(self, weight: float = 0.05, settle: int = 20, remember: int = 20_000) -> None:
        self.value = 1.0
        #: This host's clock minus SQS's, from first receives (see :meth:`age`).
        self._clock_offsets: deque[float] = deque(maxlen=51)
        self.samples = 0
        self._weight = weight
        self._settle = settle
        self._remember = remember
        self._since = time.time()
        self._others_at: float | None = None
        #: message id -> (receive count at its last receive here, handed back at once since,
        #: receives here, sent after the estimate started).
        self._seen: OrderedDict[str, tuple[int, bool, int, bool]] = OrderedDict()

    def _sample(self, value: float) -> None:
        value = min(value, float(MAX_HOT_RECEIVES))
        self.samples += 1
        if self.samples <= self._settle:
            self.value += (value - self.value) / self.samples
        else:
            self.value += self._weight * (value - self.value)

    def observe(
        self,
        message_id: str | None,
        receive_count: int,
        sent_at: datetime | None = None,
        first_received_at: datetime | None = None,
    ) -> None:
        """A message was received here (before any decision on it)."""
        if receive_count == 1 and first_received_at is not None:
            # Its first receive is this one: SQS's clock read a moment ago.
            self._clock_offsets.append(time.time() - first_received_at.timestamp())
        if message_id is None:
            return
        prior = self._seen.pop(message_id, None)
        here = 1 if prior is None else prior[2] + 1
        recent = (sent_at is not None and sent_at.timestamp() >= self._since) if prior is None else prior[3]
        if prior is not None and recent and receive_count > prior[0]:
            self._sample(receive_count / here)
        if recent and receive_count > here:
            self._others_at = time.monotonic()
        self._seen[message_id] = (receive_count, False, here, recent)
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    @property
    def others_seen(self) -> bool:
        """
        Whether another poller received a message that this one received too, in the last
        :data:`OTHERS_MEMORY` seconds: then at least two poll the queue, whatever the estimate
        (which reads low while a poller keeps receiving its own hand-backs, as one that hands
        a message back at once is often the next to receive it).
        """
        return self._others_at is not None and time.monotonic() - self._others_at < OTHERS_MEMORY

    def for_message(self, message_ids: Iterable[str], receive_count: int) -> float:
        """
        The pollers to assume for one message: the estimate, or, until the estimate has settled,
        more when the message's own counts say so. A message received ``r`` times, ``m`` of them
        here, went to other pollers ``r - m`` times: about ``r / m`` pollers share it. That is
        known from its second receive on, before the estimate has samples (a burst of new
        messages, sighted first at count 1, gives it none), and for one poller alone it is 1
        (every receive was here). Once the estimate has settled, one message's ratio is not
        taken over it: with few receives here it reads far too high (received 40 times, 3 of
        them here, by 4 pollers: 13), and a message nobody wants would be handed back at once
        again and again, long after it met every poller.
        """
        floor = 2.0 if self.others_seen else 1.0
        if self.samples >= self._settle:
            return max(self.value, floor)
        here = max((seen[2] for message_id in message_ids if (seen := self._seen.get(message_id))), default=0)
        if here <= 0:
            return max(self.value, floor)
        return max(self.value, floor, receive_count / here)

    def age(self, first_received_at: datetime | None) -> float | None:
        """
        Seconds since a message's first receive (``ApproximateFirstReceiveTimestamp``), on SQS's
        clock: this host's clock less its offset from SQS's, the median of what first receives
        showed (0 before any), so that a host whose clock is off still reads ages right.
        """
        if first_received_at is None:
            return None
        offset = statistics.median(self._clock_offsets) if self._clock_offsets else 0.0
        return max(0.0, time.time() - offset - first_received_at.timestamp())

    def first_here(self, message_ids: Iterable[str]) -> bool:
        """Whether the last receive of these messages was their first here."""
        return all((seen := self._seen.get(message_id)) is None or seen[2] <= 1 for message_id in message_ids)

    def handed_back_at_once(self, message_id: str | None) -> None:
        """This poller handed a message back with no delay (its next receive here gives a gap)."""
        seen = self._seen.get(message_id) if message_id is not None else None
        if message_id is not None and seen is not None:
            self._seen[message_id] = (seen[0], True, seen[2], seen[3])


class StepKnowledge(Protocol):
    """What is known of the steps behind tokens (:class:`~.steps.StepDirectory`)."""

    def step_closed(self, token: str) -> bool:
        """Whether the token's step is known to be closed (a message for it is stale)."""

    def step_fresh(self, token: str) -> bool:
        """Whether what is known of the token's step is recent enough to go without a look-up."""

    def step_known(self, token: str) -> bool:
        """Whether the token's step has been looked up at all."""

    def step_name(self, token: str) -> str | None:
        """The token's step name, when known."""


class HandOffKnowledge(Protocol):
    """What is known of the tokens a caller handed on (a trigger's, or a triggerer's, ledger)."""

    def handed_on(self, token: str) -> bool:
        """Whether the token was handed on (its hand-off was durable) by this caller."""

    def is_copy(self, token: str, message_id: str | None) -> bool:
        """Whether a message is a further copy of a token handed on: another message id than its own."""

    def landed(self, token: str) -> bool:
        """Whether the token's receiver has the callback for good (any message of it back is redundant)."""

    def released(self, token: str) -> bool:
        """Whether the token's hand-off was given back: its task was restarted and waits for it anew."""


class NoHandOffs:
    """A caller that hands nothing on by itself (a sensor that pokes)."""

    def handed_on(self, token: str) -> bool:
        return False

    def is_copy(self, token: str, message_id: str | None) -> bool:
        return False

    def landed(self, token: str) -> bool:
        return False

    def released(self, token: str) -> bool:
        return False


_NO_HAND_OFFS: Final = NoHandOffs()


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the policy reads: the steps behind tokens, and the caller's hand-offs."""

    steps: StepKnowledge
    handoffs: HandOffKnowledge = _NO_HAND_OFFS
    #: How many processes receive from the queue (one, unless an estimate says otherwise).
    pollers: PollerEstimate | None = None

    def poller_count(self, message_ids: Iterable[str] = (), receive_count: int = 0) -> float:
        """The pollers to assume (for one message, when given: :meth:`PollerEstimate.for_message`)."""
        if self.pollers is None:
            return 1.0
        return self.pollers.for_message(message_ids, receive_count) if receive_count else self.pollers.value

    def step_closed(self, token: str) -> bool:
        return self.steps.step_closed(token)

    def step_fresh(self, token: str) -> bool:
        return self.steps.step_fresh(token)

    def step_known(self, token: str) -> bool:
        return self.steps.step_known(token)

    def step_name(self, token: str) -> str | None:
        return self.steps.step_name(token)

    def handed_on(self, token: str) -> bool:
        return self.handoffs.handed_on(token)

    def is_copy(self, token: str, message_id: str | None) -> bool:
        return self.handoffs.is_copy(token, message_id)

    def landed(self, token: str) -> bool:
        return self.handoffs.landed(token)

    def released(self, token: str) -> bool:
        return self.handoffs.released(token)


@dataclass(frozen=True, slots=True)
class Delivery:
    """
    Every message of one token in one receive or batch: usually one; two when the ``Executing``
    and ``Stopping`` messages, or duplicates, came together (``Stopping`` wins).
    """

    callback: CallbackMessage
    receipt_handles: tuple[str, ...]
    message_ids: tuple[str, ...]
    receive_count: int
    #: The earliest first receive of its messages (SQS's ``ApproximateFirstReceiveTimestamp``).
    first_received_at: datetime | None = None

    @property
    def token(self) -> str:
        return self.callback.token


@dataclass(frozen=True, slots=True)
class Sorted:
    """The messages of one or more receives: callbacks by token, redundant copies, and the unusable."""

    deliveries: tuple[Delivery, ...]
    #: Receipt handles of further copies of tokens already handed on: deleted.
    copies: tuple[str, ...]
    invalid: tuple[UnparsedMessage, ...]


def sort(received: Iterable[ReceivedMessages], knowledge: Knowledge) -> Sorted:
    """Group the callbacks of ``received`` by token (``Stopping`` wins); copies of tokens handed on apart."""
    by_token: dict[str, tuple[CallbackMessage, list[str], list[str], int, datetime | None]] = {}
    copies: list[str] = []
    invalid: list[UnparsedMessage] = []
    for result in received:
        invalid.extend(result.invalid)
        for callback in result.callbacks:
            if knowledge.is_copy(callback.token, callback.message_id):
                if callback.receipt_handle:
                    copies.append(callback.receipt_handle)
                continue
            entry = by_token.get(callback.token)
            if entry is None:
                entry = by_token[callback.token] = (
                    callback,
                    [],
                    [],
                    callback.receive_count,
                    callback.first_received_at,
                )
            first, handles, ids, count, first_received = entry
            if callback.receipt_handle and callback.receipt_handle not in handles:
                handles.append(callback.receipt_handle)
            if callback.message_id and callback.message_id not in ids:
                ids.append(callback.message_id)
            if callback.is_stopping and not first.is_stopping:
                first = callback
            if callback.first_received_at is not None and (
                first_received is None or callback.first_received_at < first_received
            ):
                first_received = callback.first_received_at
            by_token[callback.token] = (
                first,
                handles,
                ids,
                max(count, callback.receive_count),
                first_received,
            )
    deliveries = tuple(
        Delivery(callback, tuple(handles), tuple(ids), count, first_received)
        for callback, handles, ids, count, first_received in by_token.values()
    )
    return Sorted(deliveries, tuple(copies), tuple(invalid))


class Want(StrEnum):
    """Whether a waiter wants a delivery."""

    YES = "yes"
    NO = "no"
    #: Cannot tell without the token's step name: look its execution's steps up, then ask again.
    LOOK_UP = "look-up"


def wants(matcher: CallbackMatcher, delivery: Delivery, knowledge: Knowledge) -> tuple[Want, str | None]:
    """
    Whether the waiter of ``matcher`` wants ``delivery``, and the step name it is claimed with.

    Never a callback whose step is known closed, nor one whose receiver already has it.
    """
    callback = delivery.callback
    if not matcher.matches_message(callback):
        return Want.NO, None
    token = callback.token
    if knowledge.landed(token) or knowledge.step_closed(token):
        return Want.NO, None
    name = knowledge.step_name(token) or callback.step_name
    if matcher.needs_step_name and name is None:
        return (Want.NO, None) if knowledge.step_known(token) else (Want.LOOK_UP, None)
    if matcher.matches(callback, step_name=name):
        return Want.YES, name
    return Want.NO, None


@dataclass(frozen=True, slots=True)
class Claim:
    """
    A waiter's claim on a delivery.

    :param claimer: who claimed it (the first claim of a delivery wins).
    :param hold: seconds its messages stay hidden once the hand-off is durable, until they are
        deleted once the callback is in the task's XCom; ``None`` deletes them then (an
        ``AssetWatcher``'s asset event is the durable hand-off).
    :param owner: the task instance it is handed to, if any.
    :param deleted_by: who deletes a task's messages: ``"task"`` or ``"triggerer"``.
    :param copy: a further copy of a callback the claimer already fired: deleted, and never
        counted as the token's hand-off.
    :param step_name: the step name the callback is handed on with, when known.
    :param watcher: the claimer is an ``AssetWatcher``'s trigger: once recorded, its token is
        handed on for good (any message of it back is redundant).
    """

    claimer: Hashable
    hold: int | None = None
    owner: Any = None
    deleted_by: str = "task"
    copy: bool = False
    step_name: str | None = None
    watcher: bool = False


class Verdict(StrEnum):
    """What to do with the messages of a delivery."""

    #: Keep hidden for :attr:`Decision.seconds` (a hand-off under way).
    HOLD = "hold"
    DELETE = "delete"
    #: Make visible again after :attr:`Decision.seconds`.
    HAND_BACK = "hand-back"


class Reason(StrEnum):
    """Why."""

    CLAIMED = "claimed"
    HANDED_ON = "handed-on"
    COPY = "copy"
    NOT_DURABLE = "not-durable"
    STALE = "stale"
    LANDED = "landed"
    UNWANTED = "unwanted"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class Decision:
    """
    The decision for the messages of one delivery (or one unusable message).

    :param record: the claim is the token's hand-off: remember it (copies and failures are not).
    :param came_back: the original message of a token handed on came back (its task is slow, or
        was restarted and waits for it): its new receipt handles replace the old ones.
    :param lookup: an execution whose steps are worth looking up (the answer serves the next
        delivery).
    """

    verdict: Verdict
    reason: Reason
    handles: tuple[str, ...]
    seconds: int = 0
    record: bool = False
    came_back: bool = False
    lookup: str | None = None


def decide(delivery: Delivery, claim: Claim | None, knowledge: Knowledge, *, clean: bool = True) -> Decision:
    """
    What becomes of a delivery's messages.

    :param claim: the claim that won it, if any.
    :param clean: whether the claim's hand-off went through (the trigger event was persisted);
        the standalone poll hands a claim on through the event itself, so it is always clean.
    """
    handles = delivery.receipt_handles
    token = delivery.token
    if claim is not None:
        if not clean:
            return Decision(Verdict.HAND_BACK, Reason.NOT_DURABLE, handles)
        if claim.copy:
            return Decision(Verdict.DELETE, Reason.COPY, handles)
        if claim.hold is None:
            return Decision(Verdict.DELETE, Reason.HANDED_ON, handles, record=True)
        return Decision(Verdict.HOLD, Reason.CLAIMED, handles, seconds=claim.hold, record=True)
    if knowledge.step_closed(token):
        return Decision(Verdict.DELETE, Reason.STALE, handles)
    if knowledge.landed(token):
        return Decision(Verdict.DELETE, Reason.LANDED, handles)
    pollers = knowledge.poller_count(delivery.message_ids, delivery.receive_count)
    age = None if knowledge.pollers is None else knowledge.pollers.age(delivery.first_received_at)
    lookup = None
    # Once it has surely met every poller (one alone: from its second receive), its step may be
    # closed (a stale copy): worth a look-up.
    met_every_poller = delivery.receive_count > max(1, hot_receives(pollers)) or (
        age is not None and age >= HOT_SECONDS and delivery.receive_count > 1
    )
    if met_every_poller and not knowledge.step_fresh(token):
        lookup = delivery.callback.pipeline_execution_arn
    return Decision(
        Verdict.HAND_BACK,
        Reason.UNWANTED,
        handles,
        seconds=(
            0
            # Its task was restarted and waits for it anew, maybe in another process: at once.
            if knowledge.released(token) and delivery.receive_count <= MAX_HOT_RECEIVES
            else backoff_visibility(
                delivery.receive_count,
                pollers=pollers,
                first_here=knowledge.pollers is not None
                and knowledge.pollers.first_here(delivery.message_ids),
                age=age,
            )
        ),
        came_back=knowledge.handed_on(token),
        lookup=lookup,
    )


def decide_invalid(message: UnparsedMessage, knowledge: Knowledge | None = None) -> Decision:
    """A malformed or foreign message: handed back with the growing delay, never deleted."""
    handles = (message.receipt_handle,) if message.receipt_handle else ()
    pollers = None if knowledge is None else knowledge.pollers
    first_here = (
        pollers is not None and message.message_id is not None and pollers.first_here([message.message_id])
    )
    return Decision(
        Verdict.HAND_BACK,
        Reason.UNUSABLE,
        handles,
        seconds=backoff_visibility(
            message.receive_count,
            pollers=(
                1.0
                if pollers is None
                else pollers.for_message(
                    [message.message_id] if message.message_id else [], message.receive_count
                )
            ),
            first_here=first_here,
            age=None if pollers is None else pollers.age(message.first_received_at),
        ),
    )


def visibility_changes(decisions: Sequence[Decision]) -> tuple[list[str], list[tuple[str, int]]]:
    """
    The ``DeleteMessageBatch`` and ``ChangeMessageVisibilityBatch`` entries of ``decisions``.

    A receipt handle appears once (a batch call fails whole on a repeated one); a delete wins
    over a visibility change of the same handle.
    """
    deletes = list(dict.fromkeys(h for d in decisions if d.verdict is Verdict.DELETE for h in d.handles))
    deleting = set(deletes)
    changes: dict[str, int] = {}
    for decision in decisions:
        if decision.verdict is Verdict.DELETE:
            continue
        for handle in decision.handles:
            if handle not in deleting:
                changes[handle] = decision.seconds
    return deletes, list(changes.items())
