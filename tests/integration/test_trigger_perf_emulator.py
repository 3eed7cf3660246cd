"""
The emulator's performance fixes keep moto's behaviour: the cheap queue scans, kept-alive
connections, and one request at a time on moto's state. No timings asserted.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import Queue, sqs_backends

from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing._lock import MOTO_LOCK
from airflow_sm_callback.testing._moto import FastScanQueue, fast_scans

pytestmark = [pytest.mark.integration, pytest.mark.emulator]


def backend() -> Any:
    return sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]


@pytest.mark.parametrize(
    "attributes",
    [
        {"VisibilityTimeout": "30"},
        {"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        {"KmsMasterKeyId": "alias/aws/sqs", "Policy": json.dumps({"Version": "2012-10-17", "Statement": []})},
    ],
)
def test_fast_scan_queue_answers_as_moto(attributes: dict[str, str]) -> None:
    fifo = attributes.get("FifoQueue") == "true"
    name = f"fast-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
    sqs = backend()
    dlq = sqs.create_queue(
        f"dlq-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else ""), **({"FifoQueue": "true"} if fifo else {})
    )
    queue = fast_scans(
        sqs.create_queue(
            name,
            RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq.queue_arn, "maxReceiveCount": "5"}),
            **attributes,
        )
    )
    assert isinstance(queue, FastScanQueue)
    for i in range(12):
        extra = (
            {"group_id": "g", "deduplication_id": str(i)}
            if fifo
            else {"delay_seconds": 60 if i % 4 == 0 else None}
        )
        sqs.send_message(name, f"m{i}", **extra)
    with MOTO_LOCK:
        sqs.receive_message(name, 3, 0, 30)
    with MOTO_LOCK:
        fast = queue.attributes
    assert fast == Queue.attributes.fget(queue)
    assert queue.messages == [m for m in queue._messages if m.visible and not m.delayed]
    assert queue.approximate_number_of_messages_delayed == Queue.approximate_number_of_messages_delayed.fget(
        queue
    )
    assert queue.approximate_number_of_messages_not_visible == (
        Queue.approximate_number_of_messages_not_visible.fget(queue)
    )


def test_counts_follow_every_request(emulator: CallbackEmulator, callback_queue: str) -> None:
    sqs = emulator.client("sqs")
    for i in range(5):
        sqs.send_message(QueueUrl=callback_queue, MessageBody=f"m{i}")

    def counts() -> tuple[str, str]:
        attributes = sqs.get_queue_attributes(QueueUrl=callback_queue, AttributeNames=["All"])["Attributes"]
        return attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]

    assert counts() == ("5", "0")
    received = sqs.receive_message(QueueUrl=callback_queue, MaxNumberOfMessages=2, VisibilityTimeout=30)
    assert counts() == ("3", "2")
    sqs.delete_message(QueueUrl=callback_queue, ReceiptHandle=received["Messages"][0]["ReceiptHandle"])
    assert counts() == ("3", "1")


def test_receipt_handles_answer_as_moto(emulator: CallbackEmulator, callback_queue: str) -> None:
    # The deletes and visibility changes find their message through an index of receipt
    # handles (FastScanQueue.find_message, FastSQSBackend); what each handle does is moto's.
    sqs = emulator.client("sqs")
    for i in range(30):
        sqs.send_message(QueueUrl=callback_queue, MessageBody=f"m{i}")
    first = sqs.receive_message(QueueUrl=callback_queue, MaxNumberOfMessages=10, VisibilityTimeout=0)[
        "Messages"
    ]
    second = sqs.receive_message(QueueUrl=callback_queue, MaxNumberOfMessages=10, VisibilityTimeout=0)[
        "Messages"
    ]
    by_body = {m["Body"]: m["ReceiptHandle"] for m in first}
    again = next(m for m in second if m["Body"] in by_body)
    old_handle, new_handle = by_body[again["Body"]], again["ReceiptHandle"]
    assert old_handle != new_handle
    # A handle the message had before its latest receive still changes it, as in moto.
    changed = sqs.change_message_visibility_batch(
        QueueUrl=callback_queue,
        Entries=[
            {"Id": "old", "ReceiptHandle": old_handle, "VisibilityTimeout": 600},
            {"Id": "unknown", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 600},
            {"Id": "too-long", "ReceiptHandle": new_handle, "VisibilityTimeout": 43201},
        ],
    )
    assert [s["Id"] for s in changed["Successful"]] == ["old"]
    assert {f["Id"]: f["Code"] for f in changed["Failed"]} == {
        "unknown": "ReceiptHandleIsInvalid",
        "too-long": "InvalidParameterValue",
    }
    hidden = {m["Body"] for m in emulator.queue_messages(callback_queue) if m["InFlight"]}
    assert hidden == {again["Body"]}
    # Deleting by the old handle deletes the message; again by either handle is no error; an
    # unknown handle is one.
    deleted = sqs.delete_message_batch(
        QueueUrl=callback_queue,
        Entries=[
            {"Id": "old", "ReceiptHandle": old_handle},
            {"Id": "unknown", "ReceiptHandle": "not-a-handle"},
        ],
    )
    assert [s["Id"] for s in deleted["Successful"]] == ["old"]
    assert [f["Code"] for f in deleted["Failed"]] == ["ReceiptHandleIsInvalid"]
    sqs.delete_message(QueueUrl=callback_queue, ReceiptHandle=new_handle)
    left = {m["Body"] for m in emulator.queue_messages(callback_queue)}
    assert left == {f"m{i}" for i in range(30)} - {again["Body"]}
    # Every other message: its latest handle finds it, after the deletes changed the queue.
    for message in second:
        if message["Body"] != again["Body"]:
            sqs.change_message_visibility(
                QueueUrl=callback_queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=600
            )
    hidden = {m["Body"] for m in emulator.queue_messages(callback_queue) if m["InFlight"]}
    assert hidden == {m["Body"] for m in second} - {again["Body"]}


def port_of(emulator: CallbackEmulator) -> int:
    return int(emulator.endpoint_url.rsplit(":", 1)[1])


def test_connections_are_kept_alive_and_closed_on_stop() -> None:
    with CallbackEmulator() as emulator:
        connection = http.client.HTTPConnection("127.0.0.1", port_of(emulator), timeout=10)
        for _ in range(3):
            connection.request("GET", "/_emulator/health")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None
            headers = [name.lower() for name, _ in response.getheaders()]
            assert headers.count("server") == 1
            json.loads(response.read())
        sqs = emulator.client("sqs")
        queue = emulator.create_queue("kept-alive")
        sqs.send_message(QueueUrl=queue, MessageBody="hello")
        assert sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"] == "hello"

    # The server stopped: the kept-alive connection is closed, not served by a stopped server.
    def ask_again() -> http.client.HTTPResponse:
        connection.request("GET", "/_emulator/health")
        return connection.getresponse()

    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        ask_again()


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads far more often than usual, so that races show in a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.00005)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_concurrent_receivers_each_get_a_message_once(
    emulator: CallbackEmulator, callback_queue: str
) -> None:
    # moto alone, under concurrent receives and deletes, answered some requests with HTTP 500
    # ("Set changed size during iteration") and handed one message to two receivers at once;
    # with one request at a time on moto's state, each message goes out once.
    sqs = emulator.client("sqs")
    for start in range(0, 600, 10):
        sqs.send_message_batch(
            QueueUrl=callback_queue,
            Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(10)],
        )
    emulator.clear_requests()
    bodies: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        client = emulator.client("sqs")
        while True:
            messages = client.receive_message(
                QueueUrl=callback_queue, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
            ).get("Messages", [])
            if not messages:
                return
            with lock:
                bodies.extend(m["Body"] for m in messages)
            client.delete_message_batch(
                QueueUrl=callback_queue,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    threads = [threading.Thread(target=consume) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(bodies) == sorted(f"m{i}" for i in range(600))
    statuses = Counter(r["status"] for r in emulator.requests("sqs"))
    assert set(statuses) == {200}, statuses


def test_long_poll_lets_other_requests_through(emulator: CallbackEmulator, callback_queue: str) -> None:
    result: dict[str, Any] = {}

    def long_poll() -> None:
        response = emulator.client("sqs").receive_message(QueueUrl=callback_queue, WaitTimeSeconds=20)
        result["messages"] = response.get("Messages", [])

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(1)
    # Served while the long poll waits (it holds no lock while waiting) ...
    other = emulator.create_queue(f"other-{uuid.uuid4().hex[:8]}")
    emulator.client("sqs").send_message(QueueUrl=other, MessageBody="elsewhere")
    emulator.client("sqs").send_message(QueueUrl=callback_queue, MessageBody="wake up")
    thread.join(timeout=30)
    # ... and the message sent meanwhile is what the long poll returns.
    assert [m["Body"] for m in result["messages"]] == ["wake up"]
