"""
Everything the emulator takes from inside moto (or werkzeug), each use named, and its check.

Written against moto 5.2.5 and werkzeug 3.1.9. The other modules use their public surface only
(moto's backends and their methods, its response classes, ``create_backend_app``,
``DomainDispatcherApplication``, werkzeug's ``make_server``). What no public call does sits
here, each behind a function or class whose docstring names the version it was written against
and the public alternative, if any:

- :class:`FastScanQueue` and :func:`fast_scans`: a subclass of moto's ``Queue`` put in place of
  a queue's class, reading ``Queue._messages``, for cheap scans, a receipt handle found without
  a scan, and a long poll that gives up :data:`~._lock.MOTO_LOCK` while it waits and wakes when
  a hidden message becomes visible;
- :class:`FastSQSBackend`: a subclass of moto's ``SQSBackend`` put in place of a backend's
  class, whose visibility changes find their message through the queue's receipt-handle index;
- :func:`all_messages`: every message of a queue, without receiving it (``Queue._messages``);
- :func:`purge_now`: moto's ``SQSBackend.purge_queue`` without its once-a-minute limit.

:func:`check_moto` verifies that the installed moto and werkzeug still have every attribute
and behaviour these rely on, and the few public but undocumented ones the other modules
override or match; it raises :class:`MotoCompatibilityError` naming each one that changed. The
server calls it before it starts, so that a changed moto shows as that error, not as an
``AttributeError`` deep inside a request.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import json
import random
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.utils import camelcase_to_underscores, convert_to_flask_response, unix_time, unix_time_millis
from moto.sagemaker import urls as sagemaker_urls
from moto.sagemaker.responses import SageMakerResponse
from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid
from moto.sqs.models import Message, Queue, SQSBackend
from werkzeug.serving import WSGIRequestHandler

from ._lock import MOTO_LOCK

__all__ = [
    "MOTO_WRITTEN_AGAINST",
    "WERKZEUG_WRITTEN_AGAINST",
    "FastSQSBackend",
    "FastScanQueue",
    "MotoCompatibilityError",
    "MotoSurface",
    "all_messages",
    "check_moto",
    "fast_backend",
    "fast_scans",
    "purge_now",
]

#: Seconds over which the long polls that wait for the same message to come back wake, at random:
#: the first awake gets it.
TIE_SPREAD: Final = 0.02
#: The moto release this module was written against.
MOTO_WRITTEN_AGAINST: Final = "5.2.5"
#: The werkzeug release this module was written against.
WERKZEUG_WRITTEN_AGAINST: Final = "3.1.9"


# ---------------------------------------------------------------------- SQS queues


@functools.cache
def _attribute_name(attribute: str) -> str:
    return str(camelcase_to_underscores(attribute))


class FastScanQueue(Queue):
    """
    moto's SQS queue, with the scans of its messages made cheap; it behaves the same.

    moto computes a queue's attributes (three scans of every message, each reading the clock
    once or twice per message at about 10 microseconds a read, and the attribute names
    converted anew) three times for every message it receives and once for every message it
    sends, and lists the visible messages the same way on every receive: with 1,000 messages on
    a queue one ``ReceiveMessage`` of 10 took a second. Here one scan of ``Queue._messages``
    reads the clock once and compares the numbers ``Message.visible`` and ``Message.delayed``
    compare, and :attr:`attributes` counts all three in that one scan; otherwise it is moto's
    property, line for line (a test and :func:`check_moto` compare the two). A long poll gives
    up :data:`~._lock.MOTO_LOCK` while it waits in :meth:`wait_for_messages`, and wakes when a
    hidden or delayed message becomes visible, as SQS answers a long poll as soon as a message
    is available (moto wakes it on a send, else once a second); every waiting poll wakes then,
    each at a random moment within :data:`TIE_SPREAD`, so that which gets the message is left to
    chance, as with SQS. It reads moto's ``Queue._messages_lock``, the condition moto's own
    ``wait_for_messages`` waits on and ``add_message`` notifies.

    Written against moto 5.2.5. Public alternative: none; moto's queue has no hook for its
    scans and ``SQSBackend.create_queue`` always makes a plain ``Queue``.
    """

    @property
    def messages(self) -> list[Any]:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    #: moto's list of the queue's messages (in flight and delayed ones included), oldest first.
    _messages: list[Any]

    #: Goes up each time a message's visibility changes or a message is added: a long poll that
    #: waits then looks again at when the first hidden message comes back.
    _visibility_changes: int = 0

    def wait_for_messages(self, timeout: int) -> None:
        # A long poll waiting for messages lets every other request through, and wakes when the
        # first hidden or delayed message becomes visible. moto wakes it on a send only, else
        # after ``timeout`` (1 s): a poller that handed a message back for whole seconds and
        # polled again at once woke exactly when it came back, before every poll that waited
        # already, and so received it again and again.
        # A message back just after ``timeout`` is waited for too: a wait that ended a moment
        # before it would leave it to the polls that look then. A visibility changed meanwhile
        # (:meth:`visibility_changed`) ends the wait, so that every waiting poll wakes when the
        # message comes back, not only the one that started last; which of them gets it is left
        # to chance (SQS does not say which waiting poll it answers).
        wait = self._seconds_to_next_visible()
        if wait > timeout + 0.1:
            wait = float(timeout)
        else:
            wait += random.uniform(0.0, TIE_SPREAD)
        changes = self._visibility_changes
        lock = self._messages_lock
        with MOTO_LOCK.released(), lock:
            lock.wait_for(lambda: self.messages or self._visibility_changes != changes, timeout=wait)

    def visibility_changed(self) -> None:
        """A message's visibility changed: the waiting long polls look again at when to wake."""
        with self._messages_lock:
            self._visibility_changes += 1
            self._messages_lock.notify_all()

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        if message.delayed:
            self.visibility_changed()

    def find_message(self, receipt_handle: str) -> Any:
        """
        The message on this queue that has or had ``receipt_handle``, or ``None``.

        moto finds it by asking every message on the queue whether it ever had the handle
        (``Message.had_receipt_handle``, which builds the list of the message's handles each
        time): with 1,000 messages, received a few times each, about a millisecond for each
        entry of a ``ChangeMessageVisibilityBatch`` or ``DeleteMessageBatch``, the largest share
        of the emulator's time when several triggerers hand messages back to each other. Here an
        index of handles answers: a message found there is checked to be on the queue still; a
        handle not there is looked for among the messages' current handles (the usual case: the
        latest receive's), and only then among every handle they ever had, as moto does. The
        answer is moto's: receipt handles are unique, so at most one message ever had one.
        """
        index: dict[str, Any] = self.__dict__.setdefault("_fast_handles", {})
        message = index.get(receipt_handle)
        if message is not None and message in self._messages:
            return message
        message = next((m for m in self._messages if m.receipt_handle == receipt_handle), None)
        if message is None:
            message = next((m for m in self._messages if m.had_receipt_handle(receipt_handle)), None)
        if message is not None:
            if len(index) > 4 * len(self._messages) + 1000:
                index.clear()  # the handles of deleted messages
            index[receipt_handle] = message
        return message

    def delete_message(self, receipt_handle: str) -> None:
        # moto's Queue.delete_message, line for line, with the message found by find_message
        # rather than by two scans that ask every message about every handle it had.
        if receipt_handle in self.deleted_messages:
            return
        message = self.find_message(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        self._messages = [m for m in self._messages if m is not message]

    def _seconds_to_next_visible(self) -> float:
        """Seconds until the first message that is not visible now becomes so (inf: none)."""
        now = unix_time_millis()
        first = min(
            (
                max(m.visible_at, m.delayed_until)
                for m in self._messages
                if not (now > m.visible_at and not now < m.delayed_until)
            ),
            default=None,
        )
        # ``visible`` is ``now > visible_at``: one millisecond after it.
        return float("inf") if first is None else max(0.001, (first - now + 1) / 1000)

    def _counts(self) -> dict[str, int]:
        now = unix_time_millis()
        # moto asks for the counts 3 times per message it receives or sends, in one request,
        # and never reads them there: one count per request and millisecond serves them all.
        key = (MOTO_LOCK.generation, int(now), len(self._messages))
        cached = self.__dict__.get("_fast_counts")
        if cached is not None and cached[0] == key:
            return cast("dict[str, int]", cached[1])
        visible = delayed = hidden = 0
        for message in self._messages:
            is_delayed = now < message.delayed_until
            delayed += is_delayed
            if now > message.visible_at:
                visible += not is_delayed
            else:
                hidden += 1
        counts = {
            "ApproximateNumberOfMessages": visible,
            "ApproximateNumberOfMessagesDelayed": delayed,
            "ApproximateNumberOfMessagesNotVisible": hidden,
        }
        self.__dict__["_fast_counts"] = (key, counts)
        return counts

    @property
    def approximate_number_of_messages_delayed(self) -> int:
        return self._counts()["ApproximateNumberOfMessagesDelayed"]

    @property
    def approximate_number_of_messages_not_visible(self) -> int:
        return self._counts()["ApproximateNumberOfMessagesNotVisible"]

    @property
    def attributes(self) -> dict[str, Any]:
        counts = self._counts()
        result: dict[str, Any] = {}
        for attribute in self.BASE_ATTRIBUTES:
            result[attribute] = (
                counts[attribute] if attribute in counts else getattr(self, _attribute_name(attribute))
            )
        if self.fifo_queue:
            for attribute in self.FIFO_ATTRIBUTES:
                result[attribute] = getattr(self, _attribute_name(attribute))
        if self.kms_master_key_id:
            for attribute in self.KMS_ATTRIBUTES:
                result[attribute] = getattr(self, _attribute_name(attribute))
        if self.policy:
            result["Policy"] = self.policy
        if self.redrive_policy:
            result["RedrivePolicy"] = json.dumps(self.redrive_policy)
        for key, value in result.items():
            if isinstance(value, bool):
                result[key] = str(value).lower()
        return result


def fast_scans(queue: Any) -> Any:
    """
    Make one of moto's queues a :class:`FastScanQueue` (same state, same behaviour).

    Written against moto 5.2.5: assigns the queue's ``__class__`` (moto's ``Queue`` has no
    ``__slots__``, so the two classes' instances are laid out alike). Public alternative: none
    (see :class:`FastScanQueue`).

    :param queue: a queue from moto's SQS backend.
    :return: the same queue.
    """
    if type(queue) is Queue:
        queue.__class__ = FastScanQueue
    return queue


class FastSQSBackend(SQSBackend):
    """
    moto's SQS backend, with a message's visibility changed without a scan; it behaves the same.

    moto's ``change_message_visibility`` asks every message of the queue whether it ever had the
    receipt handle (see :meth:`FastScanQueue.find_message`); here the queue's index finds it,
    and the rest is moto's method line for line. Its check that a message is still within its
    retention period, made for every message it receives, reads the queue's period directly
    rather than computing all the queue's attributes for it.

    Written against moto 5.2.5: assigned to a backend's ``__class__`` (:func:`fast_backend`).
    Public alternative: none; moto makes its backends itself.
    """

    # moto finds a backend's URL routes from the module of its class (``moto.sqs.models`` ->
    # ``moto.sqs.urls``): this class answers for moto's module.
    __module__ = SQSBackend.__module__

    def change_message_visibility(
        self, queue_name: str, receipt_handle: str, visibility_timeout: int
    ) -> None:
        queue = fast_scans(self.get_queue(queue_name))
        message = queue.find_message(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid
        visibility_timeout_msec = int(visibility_timeout) * 1000
        given_visibility_timeout = unix_time_millis() + visibility_timeout_msec
        if given_visibility_timeout - message.sent_timestamp > 43200 * 1000:
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)

    def is_message_valid_based_on_retention_period(self, queue_name: str, message: Any) -> bool:
        retain_until = self.get_queue(queue_name).message_retention_period + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())


def fast_backend(backend: Any) -> Any:
    """
    Make one of moto's SQS backends a :class:`FastSQSBackend` (same state, same behaviour).

    Written against moto 5.2.5: assigns the backend's ``__class__``, as :func:`fast_scans` does
    a queue's. Public alternative: none (see :class:`FastSQSBackend`).

    :param backend: one of moto's SQS backends.
    :return: the same backend.
    """
    if type(backend) is SQSBackend:
        backend.__class__ = FastSQSBackend
    return backend


def all_messages(queue: Any) -> list[Any]:
    """
    Every message on one of moto's queues, oldest first: in flight and delayed ones included.

    Written against moto 5.2.5: a copy of ``Queue._messages``. Call it under
    :data:`~._lock.MOTO_LOCK`. Public alternative: none; ``Queue.messages`` holds only the
    visible, undelayed messages and ``receive_message`` changes receive counts and visibility.
    """
    return list(queue._messages)


def purge_now(backend: Any, queue: Any) -> int:
    """
    Drop every message on a queue through moto's ``SQSBackend.purge_queue``, with no rate limit.

    moto refuses a second purge within 60 seconds of ``Queue.last_purged_at``
    (``PurgeQueueInProgress``) and records the time of each purge. Here that time is cleared for
    the call and the previous one put back, so the emulator's purges neither wait for nor hold
    up a ``PurgeQueue`` request. Call it under :data:`~._lock.MOTO_LOCK`.

    Written against moto 5.2.5 (``last_purged_at`` is public, but that moto keeps the limit
    there is its implementation). Public alternative: ``SQSBackend.purge_queue`` alone, which
    has the once-a-minute limit.

    :param backend: the queue's SQS backend.
    :param queue: the queue.
    :return: how many messages were dropped.
    """
    count = len(all_messages(queue))
    previous = queue.last_purged_at
    queue.last_purged_at = None
    try:
        backend.purge_queue(queue.name)
    finally:
        queue.last_purged_at = previous
    return count


# ---------------------------------------------------------------------- the check


class MotoCompatibilityError(RuntimeError):
    """The installed moto (or werkzeug) no longer has something the emulator relies on."""


@dataclasses.dataclass(frozen=True)
class MotoSurface:
    """
    The moto and werkzeug objects :func:`check_moto` inspects; the installed ones by default.

    A test passes stand-ins to see the check fail.
    """

    queue: type[Any] = Queue
    message: type[Any] = Message
    sqs_backend: type[Any] = SQSBackend
    sagemaker_response: type[Any] = SageMakerResponse
    sagemaker_url_paths: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(sagemaker_urls.url_paths)
    )
    flask_view: Callable[[Any], Any] = convert_to_flask_response
    request_handler: type[Any] = WSGIRequestHandler


#: Checks one reliance; returns what is wrong, ``None`` when all is well.
_Check = Callable[[MotoSurface], "str | None"]


@dataclasses.dataclass(frozen=True)
class _Reliance:
    name: str
    purpose: str
    check: _Check


def _probe_queue(surface: MotoSurface) -> Any:
    return surface.queue("emulator-check", "us-east-1", DEFAULT_ACCOUNT_ID)


def _code_names(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return tuple(code.co_names) if code is not None else ()


def _accepts(function: Any, *args: Any) -> bool:
    try:
        inspect.signature(function).bind(*args)
    except (TypeError, ValueError):
        return False
    return True


def _check_messages_list(surface: MotoSurface) -> str | None:
    value = getattr(_probe_queue(surface), "_messages", None)
    if value is None:
        return "a new queue has no _messages attribute"
    return None if isinstance(value, list) else f"is a {type(value).__name__}, not a list"


def _check_property(name: str) -> _Check:
    def check(surface: MotoSurface) -> str | None:
        try:
            found = inspect.getattr_static(surface.queue, name)
        except AttributeError:
            return "missing"
        return None if isinstance(found, property) else f"is a {type(found).__name__}, not a property"

    return check


def _check_attributes_copy(surface: MotoSurface) -> str | None:
    probe = _probe_queue(surface)
    expected = surface.queue.attributes.fget(probe)
    probe.__class__ = FastScanQueue
    actual = probe.attributes
    if actual == expected:
        return None
    differing = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    return f"moto's answer and FastScanQueue's copy differ in {', '.join(differing)}"


def _check_class_swap(surface: MotoSurface) -> str | None:
    probe = _probe_queue(surface)
    try:
        probe.__class__ = FastScanQueue
    except TypeError as exc:
        return f"a queue's class cannot be swapped for FastScanQueue: {exc}"
    return None


def _check_method(
    owner: str, name: str, arguments: str, *probe: Any, called_from: str | None = None
) -> _Check:
    """
    A check that moto's class ``owner`` (a :class:`MotoSurface` field: ``queue`` or
    ``sqs_backend``) has method ``name`` taking ``probe`` (named ``arguments``), and, with
    ``called_from``, that ``SQSBackend.called_from`` still calls it (an override of it is used).
    """

    def check(surface: MotoSurface) -> str | None:
        method = getattr(getattr(surface, owner), name, None)
        if not callable(method):
            return "missing"
        if not _accepts(method, None, *probe):
            return f"no longer takes ({arguments})"
        if called_from and name not in _code_names(getattr(surface.sqs_backend, called_from, None)):
            return f"SQSBackend.{called_from} no longer calls it"
        return None

    return check


def _check_messages_lock(surface: MotoSurface) -> str | None:
    value = getattr(_probe_queue(surface), "_messages_lock", None)
    if value is None:
        return "a new queue has no _messages_lock attribute"
    if not all(callable(getattr(value, name, None)) for name in ("wait_for", "notify_all", "__enter__")):
        return f"is a {type(value).__name__}, not a threading.Condition"
    return None


def _check_receipt_handles(surface: MotoSurface) -> str | None:
    """FastScanQueue.find_message finds what moto's scan finds, for current, old and unknown handles."""
    backend = surface.sqs_backend("us-east-1", DEFAULT_ACCOUNT_ID)
    queue = backend.create_queue("emulator-check")
    for body in ("a", "b", "c"):
        backend.send_message("emulator-check", body)
    handles = [m.receipt_handle for m in backend.receive_message("emulator-check", 2, 0, 0)]
    handles += [m.receipt_handle for m in backend.receive_message("emulator-check", 3, 0, 0)]
    messages = list(getattr(queue, "_messages", []))
    for message in messages:
        for name in ("receipt_handle", "had_receipt_handle", "all_receipt_handles", "sent_timestamp"):
            if not hasattr(message, name):
                return f"a received message has no {name}"
    for name in ("deleted_messages", "pending_messages"):
        if not isinstance(getattr(queue, name, None), set):
            return f"a queue's {name} is no longer a set"
    if not isinstance(getattr(queue, "message_retention_period", None), int | float):
        return "a queue's message_retention_period is no longer a number"
    queue.__class__ = FastScanQueue
    for handle in [*handles, "unknown"]:
        expected = next((m for m in messages if m.had_receipt_handle(handle)), None)
        if queue.find_message(handle) is not expected:
            return "a receipt handle no longer identifies the message that had it"
    return None


def _check_backend_swap(surface: MotoSurface) -> str | None:
    probe = surface.sqs_backend("us-east-1", DEFAULT_ACCOUNT_ID)
    try:
        probe.__class__ = FastSQSBackend
    except TypeError as exc:
        return f"a backend's class cannot be swapped for FastSQSBackend: {exc}"
    try:
        found = bool(probe.url_bases)
    except Exception as exc:
        return f"moto no longer finds FastSQSBackend's URL routes: {exc!r}"
    return None if found else "moto finds no URL routes for FastSQSBackend"


def _check_receive_waits(surface: MotoSurface) -> str | None:
    if "wait_for_messages" in _code_names(getattr(surface.sqs_backend, "receive_message", None)):
        return None
    return "SQSBackend.receive_message no longer waits in Queue.wait_for_messages"


def _check_last_purged_at(surface: MotoSurface) -> str | None:
    if not hasattr(_probe_queue(surface), "last_purged_at"):
        return "a new queue has no last_purged_at attribute"
    if "last_purged_at" not in _code_names(getattr(surface.sqs_backend, "purge_queue", None)):
        return "SQSBackend.purge_queue no longer keeps its limit in Queue.last_purged_at"
    return None


def _check_visibility_numbers(surface: MotoSurface) -> str | None:
    message = surface.message("emulator-check", "body")
    for name in ("visible_at", "delayed_until"):
        if not isinstance(getattr(message, name, None), int | float):
            return f"a new message has no number {name}"
    later = unix_time_millis() + 60_000
    message.visible_at, message.delayed_until = later, 0.0
    hidden = (message.visible, message.delayed)
    message.visible_at, message.delayed_until = 0.0, later
    delayed = (message.visible, message.delayed)
    if hidden != (False, False) or delayed != (True, True):
        return "Message.visible and Message.delayed no longer follow visible_at and delayed_until"
    return None


#: The fields of moto's messages that ``queue_messages()`` shows.
_PEEKED_MESSAGE_FIELDS: Final = (
    "id",
    "body",
    "body_md5",
    "sent_timestamp",
    "approximate_receive_count",
    "approximate_first_receive_timestamp",
    "sender_id",
    "group_id",
    "message_attributes",
)


def _check_message_fields(surface: MotoSurface) -> str | None:
    message = surface.message("emulator-check", "body")
    missing = [name for name in _PEEKED_MESSAGE_FIELDS if not hasattr(message, name)]
    return f"a new message has no {', '.join(missing)}" if missing else None


def _check_parsed_params(surface: MotoSurface) -> str | None:
    if getattr(surface.sagemaker_response(), "automated_parameter_parsing", False) is not True:
        return "SageMakerResponse no longer parses its requests into .params"
    return None


def _check_sagemaker_views(surface: MotoSurface) -> str | None:
    dispatch = getattr(surface.sagemaker_response, "dispatch", None)
    if dispatch is None:
        return "SageMakerResponse.dispatch is missing"
    if not any(handler == dispatch for handler in surface.sagemaker_url_paths.values()):
        return "moto.sagemaker.urls.url_paths no longer routes to SageMakerResponse.dispatch"
    if getattr(surface.flask_view(dispatch), "callback", None) != dispatch:
        return "convert_to_flask_response no longer keeps the handler in .callback"
    return None


def _check_handler_method(name: str) -> _Check:
    def check(surface: MotoSurface) -> str | None:
        return None if callable(inspect.getattr_static(surface.request_handler, name, None)) else "missing"

    return check


_QUEUE: Final = "moto.sqs.models.Queue"
_RELIANCES: Final = (
    _Reliance(
        f"{_QUEUE}._messages",
        "reads every message of a queue, in flight and delayed ones included "
        "(FastScanQueue's scans, queue_messages(), purge_queue()'s count)",
        _check_messages_list,
    ),
    *(
        _Reliance(
            f"{_QUEUE}.{name}",
            "overrides this property in FastScanQueue, answering it from one cheap scan",
            _check_property(name),
        )
        for name in (
            "messages",
            "attributes",
            "approximate_number_of_messages_delayed",
            "approximate_number_of_messages_not_visible",
        )
    ),
    _Reliance(
        f"{_QUEUE}.attributes (moto's answer)",
        "answers GetQueueAttributes with FastScanQueue's copy of this property",
        _check_attributes_copy,
    ),
    _Reliance(
        f"{_QUEUE}.__class__",
        "turns moto's queues into FastScanQueue in place (fast_scans())",
        _check_class_swap,
    ),
    _Reliance(
        f"{_QUEUE}.wait_for_messages",
        "gives up the lock on moto's state while a long poll waits (FastScanQueue)",
        _check_method("queue", "wait_for_messages", "timeout", 1),
    ),
    _Reliance(
        f"{_QUEUE}._messages_lock",
        "waits on and notifies the condition of a queue's long polls (FastScanQueue)",
        _check_messages_lock,
    ),
    _Reliance(
        f"{_QUEUE}.add_message",
        "wakes the waiting long polls when a delayed message is added (FastScanQueue)",
        _check_method("queue", "add_message", "message", None),
    ),
    _Reliance(
        "moto.sqs.models.Message receipt handles",
        "finds the message that has or had a receipt handle through an index "
        "(FastScanQueue.find_message), for the deletes and visibility changes",
        _check_receipt_handles,
    ),
    _Reliance(
        f"{_QUEUE}.delete_message",
        "overrides it in FastScanQueue, finding the message through the receipt-handle index",
        _check_method("queue", "delete_message", "receipt_handle", "handle", called_from="delete_message"),
    ),
    _Reliance(
        "moto.sqs.models.SQSBackend.change_message_visibility",
        "overrides it in FastSQSBackend, finding the message through the receipt-handle index",
        _check_method(
            "sqs_backend",
            "change_message_visibility",
            "queue_name, receipt_handle, visibility_timeout",
            "q",
            "h",
            0,
            called_from="change_message_visibility_batch",
        ),
    ),
    _Reliance(
        "moto.sqs.models.SQSBackend.is_message_valid_based_on_retention_period",
        "overrides it in FastSQSBackend, reading the queue's retention period directly",
        _check_method(
            "sqs_backend",
            "is_message_valid_based_on_retention_period",
            "queue_name, message",
            "q",
            None,
            called_from="receive_message",
        ),
    ),
    _Reliance(
        "moto.sqs.models.SQSBackend.__class__",
        "turns moto's SQS backends into FastSQSBackend in place (fast_backend())",
        _check_backend_swap,
    ),
    _Reliance(
        "moto.sqs.models.SQSBackend.receive_message",
        "relies on a long poll waiting in Queue.wait_for_messages; waiting elsewhere it would "
        "hold the lock on moto's state and stall every other request",
        _check_receive_waits,
    ),
    _Reliance(
        f"{_QUEUE}.last_purged_at",
        "purges a queue through SQSBackend.purge_queue without its once-a-minute limit (purge_queue())",
        _check_last_purged_at,
    ),
    _Reliance(
        "moto.sqs.models.Message.visible_at / delayed_until",
        "compares these numbers with the clock the way Message.visible and Message.delayed do "
        "(FastScanQueue)",
        _check_visibility_numbers,
    ),
    _Reliance(
        "moto.sqs.models.Message fields",
        "shows each message's fields in queue_messages()",
        _check_message_fields,
    ),
    _Reliance(
        "moto.sagemaker.responses.SageMakerResponse.params",
        "reads the SageMaker requests' parameters from it (CallbackSageMakerResponse)",
        _check_parsed_params,
    ),
    _Reliance(
        "moto.sagemaker.urls.url_paths",
        "finds the SageMaker app's views that call SageMakerResponse.dispatch and puts "
        "CallbackSageMakerResponse.dispatch in their place",
        _check_sagemaker_views,
    ),
    *(
        _Reliance(
            f"werkzeug.serving.WSGIRequestHandler.{name}",
            "overrides run_wsgi in the keep-alive request handler and builds the WSGI environ with "
            "make_environ; requests it cannot keep alive go to werkzeug's run_wsgi",
            _check_handler_method(name),
        )
        for name in ("run_wsgi", "make_environ")
    ),
)


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def check_moto(surface: MotoSurface | None = None) -> tuple[str, ...]:
    """
    Verify that moto and werkzeug still have everything the emulator relies on.

    Each reliance is checked for existence and shape (a list, a property, a method taking a
    timeout, a number driving ``Message.visible``...) and, where cheap, behaviour
    (``FastScanQueue.attributes`` against moto's property on a new queue, the receipt-handle
    index against moto's scan on a queue of three messages received twice). Takes a few
    milliseconds; the server runs it before it starts.

    :param surface: the objects to inspect (the installed moto and werkzeug when omitted).
    :return: the names of the reliances checked.
    :raises MotoCompatibilityError: naming every reliance that failed, the installed and the
        expected versions and what the emulator uses each for.
    """
    surface = surface or MotoSurface()
    problems: list[str] = []
    for reliance in _RELIANCES:
        try:
            problem = reliance.check(surface)
        except Exception as exc:
            problem = f"checking it raised {type(exc).__name__}: {exc}"
        if problem is not None:
            problems.append(f"- {reliance.name}: {problem}. The emulator {reliance.purpose}.")
    if problems:
        raise MotoCompatibilityError(
            f"The callback emulator does not work with moto {_installed('moto')} and werkzeug "
            f"{_installed('werkzeug')}: it was written against moto {MOTO_WRITTEN_AGAINST} and "
            f"werkzeug {WERKZEUG_WRITTEN_AGAINST}, and what it relies on changed:\n"
            + "\n".join(problems)
            + f"\nInstall moto[server]=={MOTO_WRITTEN_AGAINST}, or adapt airflow_sm_callback/testing/_moto.py."
        )
    return tuple(reliance.name for reliance in _RELIANCES)
