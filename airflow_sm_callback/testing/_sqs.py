"""
SQS in-process: callback messages, peeks and purges through moto's SQS backend.

The step engine's callback messages are put on queues with the backend's ``send_message``, as a
producer's ``SendMessage`` would: real messages on the queue (``SentTimestamp``, receive counts,
visibility...) that never appear in the request log. :func:`peek_queue` and
:func:`purge_queue` answer the control endpoints ``queue-messages`` and ``purge-queue``. Every
call here holds :data:`~._lock.MOTO_LOCK`; what reaches inside moto is in :mod:`._moto`.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Final
from urllib.parse import urlsplit

from moto.sqs.models import sqs_backends

from ._lock import MOTO_LOCK
from ._moto import all_messages, fast_backend, fast_scans, purge_now

__all__ = [
    "fast_scan_queues",
    "parse_queue_url",
    "peek_queue",
    "purge_queue",
    "send_to_queue",
    "visibility_changed",
]

_SQS_HOST_RE: Final = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_LEGACY_SQS_HOST_RE: Final = re.compile(r"^([a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)?$")


def parse_queue_url(queue_url: str, default_region: str) -> tuple[str, str, str]:
    """
    Find account, region and queue name in an SQS queue URL.

    Works for real AWS URLs (``https://sqs.us-east-1.amazonaws.com/123456789012/q``, the legacy
    ``https://queue.amazonaws.com/...`` and ``https://eu-west-1.queue.amazonaws.com/...``) and for
    the emulator's own (``http://127.0.0.1:PORT/123456789012/q``), whose region is
    ``default_region``.

    :param queue_url: the URL.
    :param default_region: region to assume when the host names none.
    :return: ``(account_id, region, queue_name)``.
    :raises ValueError: when the path is not ``/<account>/<name>``.
    """
    parsed = urlsplit(queue_url)
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) != 2 or not parts[0].isdigit():
        raise ValueError(f"not an SQS queue URL: {queue_url!r}")
    host = (parsed.hostname or "").lower()
    match = _SQS_HOST_RE.match(host) or _LEGACY_SQS_HOST_RE.match(host)
    if match:
        region = match.group(1)
    elif host == "queue.amazonaws.com":
        region = "us-east-1"
    else:
        region = default_region
    return parts[0], region, parts[1]


def fast_scan_queues(account_id: str, region: str) -> None:
    """
    Make every plain queue of one account and region a :class:`~._moto.FastScanQueue`, and its
    backend a :class:`~._moto.FastSQSBackend`.
    """
    backend = fast_backend(sqs_backends[account_id][region])
    for queue in list(backend.queues.values()):
        fast_scans(queue)


def visibility_changed(account_id: str, region: str, name: str) -> None:
    """
    Wake the long polls waiting on a queue once a ``ChangeMessageVisibility`` was answered: each
    looks again at when the first hidden message comes back (see
    :meth:`~._moto.FastScanQueue.visibility_changed`). Call it under :data:`~._lock.MOTO_LOCK`.
    """
    queue = sqs_backends[account_id][region].queues.get(name)
    if queue is not None:
        fast_scans(queue).visibility_changed()


def _backend_and_queue(queue_url: str, default_region: str) -> tuple[Any, Any]:
    account_id, region, name = parse_queue_url(queue_url, default_region)
    backend = fast_backend(sqs_backends[account_id][region])
    return backend, fast_scans(backend.get_queue(name))


def send_to_queue(queue_url: str, body: str, default_region: str) -> None:
    """
    Put a message on a queue through moto's SQS backend, as a producer's ``SendMessage`` would.

    :param queue_url: the queue's URL (see :func:`parse_queue_url`).
    :param body: the message body.
    :param default_region: region to assume when the URL names none.
    :raises Exception: when the queue does not exist or is a FIFO queue.
    """
    with MOTO_LOCK:
        backend, queue = _backend_and_queue(queue_url, default_region)
        if queue.fifo_queue:
            raise ValueError(f"{queue.name} is a FIFO queue; callback steps need a standard queue")
        backend.send_message(queue.name, body)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


def peek_queue(queue_url: str, default_region: str) -> list[dict[str, Any]]:
    """
    Every message currently on a queue, without receiving it.

    Nothing changes: no receive count goes up, no visibility changes. In-flight messages
    (received and not yet deleted, their visibility timeout still running) are included with
    ``"InFlight": true``; delayed ones with ``"Delayed": true``; deleted ones are gone.

    :param queue_url: the queue's URL.
    :param default_region: region to assume when the URL names none.
    :return: one dictionary per message, oldest first.
    """
    with MOTO_LOCK:
        messages = all_messages(_backend_and_queue(queue_url, default_region)[1])
    result: list[dict[str, Any]] = []
    for message in messages:
        attributes: dict[str, str] = {
            "SentTimestamp": str(message.sent_timestamp),
            "ApproximateReceiveCount": str(message.approximate_receive_count),
            "SenderId": str(message.sender_id),
        }
        if message.approximate_first_receive_timestamp:
            attributes["ApproximateFirstReceiveTimestamp"] = str(message.approximate_first_receive_timestamp)
        if message.group_id:
            attributes["MessageGroupId"] = str(message.group_id)
        result.append(
            {
                "MessageId": message.id,
                "Body": message.body,
                "MD5OfBody": message.body_md5,
                "Attributes": attributes,
                "MessageAttributes": _jsonable(message.message_attributes),
                "InFlight": not message.visible,
                "Delayed": message.delayed,
            }
        )
    return result


def purge_queue(queue_url: str, default_region: str) -> int:
    """
    Drop every message on a queue at once (moto's ``PurgeQueue`` allows one purge a minute).

    :param queue_url: the queue's URL.
    :param default_region: region to assume when the URL names none.
    :return: how many messages were dropped.
    """
    with MOTO_LOCK:
        backend, queue = _backend_and_queue(queue_url, default_region)
        return purge_now(backend, queue)
