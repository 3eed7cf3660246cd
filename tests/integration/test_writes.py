"""A shared stream's writes (QueueWrites), against the emulator: grouped, in order, nothing raised."""

from __future__ import annotations

import asyncio

import pytest

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.triggers.writes import QueueWrites

pytestmark = pytest.mark.integration


def _received(emulator: CallbackEmulator, queue_url: str, count: int) -> list[str]:
    sqs = emulator.client("sqs")
    for start in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(min(10, count - start))],
        )
    handles: list[str] = []
    while len(handles) < count:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300)
        handles.extend(m["ReceiptHandle"] for m in messages.get("Messages", []))
    return handles


def _visible(emulator: CallbackEmulator, queue_url: str) -> list[str]:
    return sorted(m["Body"] for m in emulator.queue_messages(queue_url) if not m.get("InFlight"))


async def test_writes_made_together_go_in_one_request_and_those_made_meanwhile_in_the_next(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    handles = _received(emulator, callback_queue, 20)
    emulator.clear_requests()
    async with SageMakerCallbackHook(aws_conn_id=aws_conn) as hook:
        writes = QueueWrites(lambda: hook, callback_queue)
        # Five triggers' hand-backs of two messages each, decided in one turn of the loop.
        await asyncio.gather(
            *(writes.write(changes=[(h, 0) for h in handles[i : i + 2]]) for i in range(0, 10, 2))
        )
        assert emulator.request_counts("sqs", queue=callback_queue)["ChangeMessageVisibilityBatch"] == 1
        assert len(_visible(emulator, callback_queue)) == 10
        # Written while a group is under way: the next group, together.
        first = asyncio.ensure_future(writes.write(changes=[(handles[10], 0)]))
        await asyncio.sleep(0)
        rest = [writes.write(changes=[(h, 0)]) for h in handles[11:20]]
        await asyncio.gather(first, *rest)
        await writes.aclose()
    assert emulator.request_counts("sqs", queue=callback_queue)["ChangeMessageVisibilityBatch"] == 3
    assert writes.groups == 3
    assert len(_visible(emulator, callback_queue)) == 20


async def test_the_last_write_of_a_message_wins_and_a_delete_wins_over_a_change(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    kept, back, deleted = _received(emulator, callback_queue, 3)
    async with SageMakerCallbackHook(aws_conn_id=aws_conn) as hook:
        writes = QueueWrites(lambda: hook, callback_queue)
        await asyncio.gather(
            writes.write(changes=[(kept, 0), (back, 600)]),
            writes.write(changes=[(kept, 900), (back, 0)]),
            writes.write(deletes=[deleted]),
            writes.write(changes=[(deleted, 0)]),
        )
    left = {m["Body"]: m for m in emulator.queue_messages(callback_queue)}
    assert sorted(left) == ["m0", "m1"]
    assert left["m0"].get("InFlight")  # hidden for 900 s, the later write
    assert not left["m1"].get("InFlight")


async def test_a_failed_write_is_logged_not_raised_and_the_next_group_goes_out(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str, caplog: pytest.LogCaptureFixture
) -> None:
    (handle,) = _received(emulator, callback_queue, 1)
    emulator.inject_fault("sqs", "ChangeMessageVisibilityBatch", "AccessDenied", count=1)
    async with SageMakerCallbackHook(aws_conn_id=aws_conn) as hook:
        writes = QueueWrites(lambda: hook, callback_queue)
        await writes.write(changes=[(handle, 0)])  # refused: still hidden, nothing raised
        assert _visible(emulator, callback_queue) == []
        assert f"Writing to {callback_queue} failed" in caplog.text
        await writes.write(changes=[(handle, 0)])
    assert _visible(emulator, callback_queue) == ["m0"]
