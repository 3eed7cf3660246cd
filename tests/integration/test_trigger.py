"""SageMakerCallbackTrigger against the emulator: the standalone path and shared streams."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_callback.callback import CallbackMatcher
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing.triggerer import SharedStreamHarness
from airflow_sm_callback.triggers.callback import CallbackBatch, SageMakerCallbackTrigger
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration

MESSAGES = Path(__file__).parents[1] / "data" / "messages"


def trigger_for(
    queue_url: str, conn: str, single_event: bool | None = True, **criteria: Any
) -> SageMakerCallbackTrigger:
    return SageMakerCallbackTrigger(
        queue_url=queue_url,
        matcher=CallbackMatcher(**criteria),
        aws_conn_id=conn,
        wait_time_seconds=1,
        handoff_visibility=300,
        single_event=single_event,
    )


def start_many(emulator: CallbackEmulator, queue_url: str, count: int, **kwargs: Any) -> list[str]:
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(queue_url, **kwargs))
    return [emulator.start_execution(name) for _ in range(count)]


def test_serialize_round_trip() -> None:
    trigger = SageMakerCallbackTrigger(
        queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/q",
        matcher=CallbackMatcher(pipeline_name="p", step_name="S", arguments={"step_name": "score"}),
        aws_conn_id="c",
        region_name="eu-west-1",
        verify=False,
        botocore_config={"retries": {"mode": "standard"}},
        single_event=True,
        deadline=2_000_000_000.0,
        not_before=1_900_000_000.0,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_sm_callback.triggers.callback.SageMakerCallbackTrigger"
    json.dumps(kwargs)
    again = SageMakerCallbackTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert again.matcher == trigger.matcher
    assert again.shared_stream_key() == trigger.shared_stream_key()
    other = SageMakerCallbackTrigger(**{**kwargs, "matcher": {"pipeline_name": "other"}})
    assert other.shared_stream_key() == trigger.shared_stream_key()
    elsewhere = SageMakerCallbackTrigger(**{**kwargs, "aws_conn_id": "d"})
    assert elsewhere.shared_stream_key() != trigger.shared_stream_key()


async def first_event(trigger: SageMakerCallbackTrigger, timeout: float = 20) -> dict[str, Any]:
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.asend(None), timeout)
    finally:
        await gen.aclose()
    return event.payload


async def test_standalone_run_fires_its_own_callback_and_keeps_it_hidden(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    arns = start_many(emulator, callback_queue, 3)
    for arn in reversed(arns):
        payload = await first_event(trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        assert payload["status"] == "success"
        assert payload["callback"]["pipeline_execution_arn"] == arn
        assert payload["queue_url"] == callback_queue
        assert payload["receipt_handles"]
    # The claimed messages are still on the queue, hidden, until the task deletes them.
    messages = emulator.queue_messages(callback_queue)
    assert len(messages) == 3
    assert all(m.get("InFlight") for m in messages)


@pytest.mark.parametrize("shared", [False, True], ids=["standalone", "shared-stream"])
async def test_a_callback_claimed_before_not_before_is_held_until_then(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str, shared: bool
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    trigger = trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn)
    trigger.not_before = time.time() + 4
    started = time.monotonic()
    if shared:
        async with SharedStreamHarness(persist_delay=0.5) as harness:
            harness.add(1, trigger)
            assert await harness.wait_for_events(1, within=20)
            (fired,) = harness.events_of(1)
            payload, held = fired.event.payload, fired.at - started
            await asyncio.sleep(2)  # the persist confirmation, then the delete
    else:
        payload = await first_event(trigger)
        held = time.monotonic() - started
    assert payload["callback"]["pipeline_execution_arn"] == arn
    assert 3.5 <= held < 15
    # Claimed while held: hidden (standalone) or deleted after the persist (shared), never lost.
    left = emulator.queue_messages(callback_queue)
    assert all(m.get("InFlight") for m in left)
    assert len(left) == (0 if shared else 1)


async def test_standalone_watcher_yields_every_callback_and_deletes_after_resume(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    arns = start_many(emulator, callback_queue, 3)
    pipeline = arns[0].split("/")[1]
    trigger = trigger_for(callback_queue, aws_conn, single_event=False, pipeline_name=pipeline)
    gen = trigger.run()
    seen = []
    try:
        for _ in range(3):
            event = await asyncio.wait_for(gen.asend(None), 20)
            seen.append(event.payload["callback"]["pipeline_execution_arn"])
        # Resuming after the last event deletes its messages; the poll then waits again.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gen.asend(None), 3)
    finally:
        await gen.aclose()
    assert sorted(seen) == sorted(arns)
    assert emulator.queue_messages(callback_queue) == []


async def test_standalone_permanent_error_is_an_error_event(
    emulator: CallbackEmulator, aws_conn: str
) -> None:
    missing = emulator.endpoint_url + "/123456789012/no-such-queue"
    payload = await first_event(trigger_for(missing, aws_conn, pipeline_name="p"))
    assert payload["status"] == "error"
    assert "no-such-queue" in payload["message"]


async def test_shared_stream_routes_each_callback_to_its_own_trigger(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    sqs = emulator.client("sqs")
    for name in ("broken-not-json.txt", "foreign-s3-event.json", "broken-no-token.json"):
        sqs.send_message(QueueUrl=callback_queue, MessageBody=(MESSAGES / name).read_text())
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=1.5) as harness:
        triggers = {}
        order = list(range(12))
        for i in order:
            arn_placeholder = f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/{name}/execution/e{i:011d}"
            triggers[i] = arn_placeholder
        # Start the executions in random order and wait for each with its own trigger.
        random.shuffle(order)
        arns = {i: emulator.start_execution(name) for i in order}
        for i, arn in arns.items():
            harness.add(i, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        assert await harness.wait_for_events(12, within=30)
        for i, arn in arns.items():
            (fired,) = harness.events_of(i)
            assert fired.event.payload["callback"]["pipeline_execution_arn"] == arn
            assert fired.event.payload["receipt_handles"] is None
        # Before the persist confirmations nothing matched is deleted.
        assert emulator.request_counts("sqs")["DeleteMessageBatch"] == 0
        await asyncio.sleep(3)
        counts = emulator.request_counts("sqs")
        # One poll loop: the receives are the producer's, not one per trigger.
        assert counts["ReceiveMessage"] <= 12
        assert counts["DeleteMessageBatch"] >= 1
        assert not harness.failures
    left = sorted(m["Body"] for m in emulator.queue_messages(callback_queue))
    assert left == sorted(
        (MESSAGES / n).read_text()
        for n in ("broken-not-json.txt", "foreign-s3-event.json", "broken-no-token.json")
    )


async def test_shared_stream_never_deletes_an_unconfirmed_claim(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=None, ack_timeout=2.0) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(4)
        assert 1 in harness.failures  # the ack timeout failed the trigger
    # Not deleted, and handed back at once for redelivery (a poll already under way when the
    # stream stopped may have taken it again: it then comes back when that visibility ends).
    (message,) = emulator.queue_messages(callback_queue)
    assert message["Attributes"]["ApproximateReceiveCount"] in {"1", "2"}
    counts = emulator.request_counts("sqs")
    assert counts["DeleteMessageBatch"] == 0
    assert counts["ChangeMessageVisibilityBatch"] >= 1


async def test_shared_stream_step_name_and_argument_matching(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    name = unique("two")
    definition = callback_definition(callback_queue, steps=("Score",))
    second = json.loads(json.dumps(definition["Steps"][0]))
    second["Name"] = "Approve"
    second["Arguments"] = {"step_name": "approve"}
    definition["Steps"].append(second)
    emulator.create_pipeline(name, definition)
    arn = emulator.start_execution(name)
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn, step_name="Approve"))
        harness.add(
            2,
            trigger_for(
                callback_queue, aws_conn, pipeline_execution_arn=arn, arguments={"step_name": "score"}
            ),
        )
        assert await harness.wait_for_events(2, within=30)
        await asyncio.sleep(1.5)
    approve = harness.events_of(1)[0].event.payload["callback"]
    score = harness.events_of(2)[0].event.payload["callback"]
    assert approve["step_name"] == "Approve"
    assert approve["arguments"] == {"step_name": "approve"}
    assert score["arguments"] == {"step_name": "score"}
    assert approve["token"] != score["token"]
    assert emulator.queue_messages(callback_queue) == []


async def test_shared_stream_duplicates_yield_one_result(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    sqs = emulator.client("sqs")
    sqs.send_message(QueueUrl=callback_queue, MessageBody=original["Body"])
    stopping = dict(json.loads(original["Body"]), status="Stopping")
    sqs.send_message(QueueUrl=callback_queue, MessageBody=json.dumps(stopping))
    pipeline = arn.split("/")[1]
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        harness.add(2, trigger_for(callback_queue, aws_conn, single_event=False, pipeline_name=pipeline))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(2)
    assert len(harness.events) == 1
    assert harness.events[0].event.payload["callback"]["status"] == "Stopping"
    assert emulator.queue_messages(callback_queue) == []


@pytest.mark.parametrize("persist", ["persisted", "failed"])
async def test_shared_stream_deletes_later_copies_but_keeps_the_first_until_persisted(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str, persist: str
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    sqs = emulator.client("sqs")
    persisted = persist == "persisted"
    async with SharedStreamHarness(persist_delay=3.0 if persisted else None, ack_timeout=4.0) as harness:
        # A bystander keeps the stream (and what it remembers of hand-offs) open throughout.
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        assert await harness.wait_for_events(1, within=20)
        # A copy arrives after the trigger fired, before its event is persisted: the fired
        # trigger takes it, and the stream deletes it once the trigger has moved past it.
        sqs.send_message(QueueUrl=callback_queue, MessageBody=original["Body"])
        for _ in range(40):
            await asyncio.sleep(0.25)
            if len(emulator.queue_messages(callback_queue)) == 1:
                break
        assert len(emulator.queue_messages(callback_queue)) == 1
        if persisted:
            await asyncio.sleep(4)
            assert emulator.queue_messages(callback_queue) == []
        else:
            # The first event is never persisted (the ack timeout fails its trigger): the first
            # copy comes back, and the deleted copy did not count as the token's hand-off, so
            # another waiter still gets it.
            for _ in range(40):
                await asyncio.sleep(0.25)
                if 1 in harness.failures:
                    break
            assert 1 in harness.failures
            harness.add(2, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
            assert await harness.wait_for_events(2, within=30)
            (again,) = harness.events_of(2)
            assert again.event.payload["callback"]["message_id"] == original["MessageId"]
    assert len(harness.events) == (1 if persisted else 2)


async def test_shared_stream_idle_is_one_long_poll(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    emulator.clear_requests()
    async with SharedStreamHarness() as harness:
        for i in range(50):
            harness.add(i, trigger_for(callback_queue, aws_conn, pipeline_name=f"p{i}"))
        await asyncio.sleep(3)
        # One 20-second long poll is under way (logged when it returns), not fifty.
        assert emulator.request_counts("sqs")["ReceiveMessage"] <= 1


def test_batch_claim_is_first_come() -> None:
    from airflow_sm_callback.callback import CallbackMessage
    from airflow_sm_callback.triggers.callback import Delivery

    callback = CallbackMessage.from_body(
        json.dumps(
            {
                "token": "Ab3dE6gH9k",
                "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/x",
            }
        )
    )
    delivery = Delivery(callback=callback, receipt_handles=["r"], receive_count=1)
    batch = CallbackBatch(id=1, deliveries=[delivery], invalid=[], router=None)  # type: ignore[arg-type]
    assert batch.claim(delivery, 1)
    assert not batch.claim(delivery, 2)
    assert delivery.claimed_by == 1
