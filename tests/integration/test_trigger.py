"""SageMakerCallbackTrigger against the emulator: the standalone path and shared streams."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import CallbackMatcher
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing.triggerer import SharedStreamHarness
from airflow_sm_callback.triggers import _process
from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger
from airflow_sm_callback.triggers.handoffs import HandOffConfirmer, TaskKey
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


def owned_by(trigger: SageMakerCallbackTrigger, run_id: str) -> SageMakerCallbackTrigger:
    """The trigger of task ``wait`` of ``run_id``, as the triggerer sets it."""
    trigger.task_instance = SimpleNamespace(dag_id="d", run_id=run_id, task_id="wait", map_index=-1)  # type: ignore[assignment]
    return trigger


def task_trigger(
    queue_url: str, conn: str, arn: str, run_id: str = "run-a", hold: int = 300
) -> SageMakerCallbackTrigger:
    """A sensor's trigger for one execution, of task ``wait`` of ``run_id``, with its hand-off hold."""
    trigger = owned_by(trigger_for(queue_url, conn, pipeline_execution_arn=arn), run_id)
    trigger.handoff_visibility = hold
    return trigger


async def fired_within(harness: SharedStreamHarness, trigger_id: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if harness.events_of(trigger_id):
            return True
        await asyncio.sleep(0.1)
    return False


async def queue_empty_within(emulator: CallbackEmulator, queue_url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not emulator.queue_messages(queue_url):
            return True
        await asyncio.sleep(0.25)
    return False


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
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, shared: bool
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
            await asyncio.sleep(2)  # the persist confirmation, then the advance
    else:
        payload = await first_event(trigger)
        held = time.monotonic() - started
    assert payload["callback"]["pipeline_execution_arn"] == arn
    assert 3.5 <= held < 15
    # Claimed while held, and after the event: hidden until the task deletes it, never lost.
    (left,) = emulator.queue_messages(callback_queue)
    assert left.get("InFlight")
    assert payload["receipt_handles"]


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


async def test_a_watcher_s_messages_are_deleted_only_once_its_asset_event_is_durable(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    An ``AssetWatcher``'s trigger on the shared poll. From Airflow 3.3 its messages are deleted
    once Airflow confirms the asset event persisted. Below 3.3 Airflow confirms nothing: they
    are held for ``handoff_visibility`` and deleted when they come back, each callback fired
    once (docs/design.md, "Waiting below Airflow 3.3").
    """
    arns = start_many(emulator, callback_queue, 2)
    pipeline = arns[0].split("/")[1]
    watcher = trigger_for(callback_queue, aws_conn, single_event=False, pipeline_name=pipeline)
    watcher.handoff_visibility = 4
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=0.5) as harness:
        harness.add(1, watcher, fires_once=False)
        assert await harness.wait_for_events(2, within=20)
        await asyncio.sleep(1.5)
        left = emulator.queue_messages(callback_queue)
        if harness_mode == "local":
            # Not deleted on the word of the event: hidden, then deleted once the hold ended.
            assert len(left) == 2
            assert all(m.get("InFlight") for m in left)
            assert emulator.request_counts("sqs", queue=callback_queue).get("DeleteMessageBatch", 0) == 0
            assert await queue_empty_within(emulator, callback_queue, 40)
        else:
            assert left == []
        await asyncio.sleep(1)
        assert len(harness.events_of(1)) == 2
        assert not harness.failures
    fired = sorted(e.event.payload["callback"]["pipeline_execution_arn"] for e in harness.events)
    assert fired == sorted(arns)


async def test_standalone_permanent_error_is_an_error_event(
    emulator: CallbackEmulator, aws_conn: str
) -> None:
    missing = emulator.endpoint_url + "/123456789012/no-such-queue"
    payload = await first_event(trigger_for(missing, aws_conn, pipeline_name="p"))
    assert payload["status"] == "error"
    assert "no-such-queue" in payload["message"]


async def test_shared_stream_routes_each_callback_to_its_own_trigger(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    sqs = emulator.client("sqs")
    for name in ("broken-not-json.txt", "foreign-s3-event.json", "broken-no-token.json"):
        sqs.send_message(QueueUrl=callback_queue, MessageBody=(MESSAGES / name).read_text())
    name = unique("pipe")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=1.5, resume_delay=1.0) as harness:
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
            assert fired.event.payload["receipt_handles"]
        # Before the tasks resume nothing matched is deleted: the persist keeps them hidden.
        await asyncio.sleep(1.8)
        assert emulator.request_counts("sqs", queue=callback_queue)["DeleteMessageBatch"] == 0
        assert len(emulator.queue_messages(callback_queue)) == 15
        await harness.wait_for_resumes()
        counts = emulator.request_counts("sqs", queue=callback_queue)
        # One poll loop: the receives are the producer's, not one per trigger.
        assert counts["ReceiveMessage"] <= 12
        assert counts["DeleteMessageBatch"] >= 12  # each task deletes its own
        assert not harness.failures
    left = sorted(m["Body"] for m in emulator.queue_messages(callback_queue))
    assert left == sorted(
        (MESSAGES / n).read_text()
        for n in ("broken-not-json.txt", "foreign-s3-event.json", "broken-no-token.json")
    )


async def test_shared_stream_never_deletes_an_unconfirmed_claim(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=None, ack_timeout=2.0) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(4)
        if harness_mode == "local":
            # Below 3.3 Airflow confirms no persist (and times nothing out): the claim is held
            # for its hand-off, never deleted on the word of its event.
            assert not harness.failures
            (held,) = emulator.queue_messages(callback_queue)
            assert held.get("InFlight")
            assert emulator.request_counts("sqs", queue=callback_queue).get("DeleteMessageBatch", 0) == 0
            return
        assert 1 in harness.failures  # the ack timeout failed the trigger
    # Not deleted, and handed back at once for redelivery (a poll already under way when the
    # stream stopped may have taken it again: it then comes back when that visibility ends).
    (message,) = emulator.queue_messages(callback_queue)
    assert message["Attributes"]["ApproximateReceiveCount"] in {"1", "2"}
    counts = emulator.request_counts("sqs", queue=callback_queue)
    assert counts["DeleteMessageBatch"] == 0
    assert counts["ChangeMessageVisibilityBatch"] >= 1


async def test_shared_stream_step_name_and_argument_matching(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    name = unique("two")
    definition = callback_definition(callback_queue, steps=("Score",))
    second = json.loads(json.dumps(definition["Steps"][0]))
    second["Name"] = "Approve"
    second["Arguments"] = {"step_name": "approve"}
    definition["Steps"].append(second)
    emulator.create_pipeline(name, definition)
    arn = emulator.start_execution(name)
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.2) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn, step_name="Approve"))
        harness.add(
            2,
            trigger_for(
                callback_queue, aws_conn, pipeline_execution_arn=arn, arguments={"step_name": "score"}
            ),
        )
        assert await harness.wait_for_events(2, within=30)
        await asyncio.sleep(1.5)
        await harness.wait_for_resumes()
    approve = harness.events_of(1)[0].event.payload["callback"]
    score = harness.events_of(2)[0].event.payload["callback"]
    assert approve["step_name"] == "Approve"
    assert approve["arguments"] == {"step_name": "approve"}
    assert score["arguments"] == {"step_name": "score"}
    assert approve["token"] != score["token"]
    assert emulator.queue_messages(callback_queue) == []


async def test_shared_stream_duplicates_yield_one_result(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    sqs = emulator.client("sqs")
    sqs.send_message(QueueUrl=callback_queue, MessageBody=original["Body"])
    stopping = dict(json.loads(original["Body"]), status="Stopping")
    sqs.send_message(QueueUrl=callback_queue, MessageBody=json.dumps(stopping))
    pipeline = arn.split("/")[1]
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.2) as harness:
        harness.add(1, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn))
        harness.add(2, trigger_for(callback_queue, aws_conn, single_event=False, pipeline_name=pipeline))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(2)
        await harness.wait_for_resumes()
    assert len(harness.events) == 1
    assert harness.events[0].event.payload["callback"]["status"] == "Stopping"
    assert emulator.queue_messages(callback_queue) == []


@pytest.mark.parametrize("persist", ["persisted", "failed"])
async def test_shared_stream_deletes_later_copies_but_keeps_the_first_until_persisted(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, persist: str
) -> None:
    persisted = persist == "persisted"
    if harness_mode == "local" and not persisted:
        pytest.skip("below Airflow 3.3 no persist fails visibly: a claim is held for its hand-off")
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    sqs = emulator.client("sqs")
    async with SharedStreamHarness(
        persist_delay=3.0 if persisted else None, ack_timeout=4.0, resume_delay=0.5
    ) as harness:
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
            await asyncio.sleep(3)
            # Persisted: the first copy stays hidden until the task deletes it.
            (held,) = emulator.queue_messages(callback_queue)
            assert held["MessageId"] == original["MessageId"]
            await harness.wait_for_resumes()
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
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    started = time.time()
    async with SharedStreamHarness() as harness:
        for i in range(50):
            harness.add(i, trigger_for(callback_queue, aws_conn, pipeline_name=f"p{i}"))
        # The emulator logs a request when it answers: wait for the first long poll to return.
        await asyncio.sleep(21.5)
        receives = [
            r
            for r in emulator.requests("sqs", queue=callback_queue)
            # Made since the triggers started (their own queue: see the emulator's request log).
            if r["action"] == "ReceiveMessage" and r["time"] - r["duration"] >= started
        ]
        # One 20-second long poll returned, the next is under way: not fifty of each.
        assert len(receives) == 1
        assert receives[0]["duration"] >= 19


def test_batch_claim_is_first_come() -> None:
    from airflow_sm_callback.protocol import CallbackMessage
    from airflow_sm_callback.protocol.routing import Claim, Delivery
    from airflow_sm_callback.triggers.desk import CallbackBatch, StreamDesk
    from airflow_sm_callback.triggers.handoffs import HandOffLedger

    callback = CallbackMessage.from_body(
        json.dumps(
            {
                "token": "Ab3dE6gH9k",
                "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/x",
            }
        )
    )
    delivery = Delivery(callback=callback, receipt_handles=("r",), message_ids=("m",), receive_count=1)
    desk = StreamDesk(SageMakerCallbackHook(aws_conn_id=None), "q", HandOffLedger())
    batch = CallbackBatch.of(1, [delivery], desk)
    desk.open(batch.id)
    assert desk.claim(batch.id, delivery.token, Claim(1))
    assert not desk.claim(batch.id, delivery.token, Claim(2))
    claim = desk.claim_of(batch.id, delivery.token)
    assert claim is not None
    assert claim.claimer == 1
    # The claims are the desk's values: the producer reads them back; the broadcast event is untouched.
    assert desk.close(batch.id) == {"Ab3dE6gH9k": Claim(1)}
    assert batch.deliveries == (delivery,)
    assert not desk.claim(batch.id, delivery.token, Claim(3))  # advanced: no more claims


# -- a resumed task that Airflow restarts without its event ---------------------------------------


@pytest.mark.parametrize("stream", ["kept-open", "stopped-between"])
async def test_a_task_restarted_without_its_event_takes_its_hand_off_again(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, stream: str
) -> None:
    """
    Airflow drops a persisted event when it restarts a resumed task from scratch (a startup
    failure reschedules it); the task defers again and its new trigger gets the same hand-off
    at once, from the same triggerer process, whether or not the stream stopped in between.
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        if stream == "kept-open":
            harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, task_trigger(callback_queue, aws_conn, arn))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(1.5)  # persisted, advanced, trigger cancelled: the task "resumes"
        (first,) = harness.events_of(1)
        (held,) = emulator.queue_messages(callback_queue)
        assert held.get("InFlight")
        # The restarted task defers again: its new trigger fires with the same callback.
        harness.add(2, task_trigger(callback_queue, aws_conn, arn))
        assert await fired_within(harness, 2, 10)
        (again,) = harness.events_of(2)
        assert again.event.payload["callback"] == first.event.payload["callback"]
        assert again.event.payload["receipt_handles"] == first.event.payload["receipt_handles"]
        assert again.event.payload["deleted_by"] == "triggerer"
        # The restarted task pushes it to XCom and succeeds; then the stream deletes the message.
        (held,) = emulator.queue_messages(callback_queue)
        assert held.get("InFlight")
        harness.set_task_state(TaskKey("d", "run-a", "wait"), "success")
        assert await queue_empty_within(emulator, callback_queue, 30)
        # Retried or cleared later (its XCom cleared), while the step is open: given again.
        # Another task never gets it.
        harness.add(3, task_trigger(callback_queue, aws_conn, arn))
        harness.add(4, task_trigger(callback_queue, aws_conn, arn, "run-b"))
        assert await fired_within(harness, 3, 10)
        assert harness.events_of(3)[0].event.payload["callback"] == first.event.payload["callback"]
        await asyncio.sleep(1)
        assert not harness.events_of(4)


@pytest.mark.parametrize("stream", ["kept-open", "stopped-between"])
async def test_a_stale_hand_off_is_not_taken_again(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, stream: str
) -> None:
    """The step is looked up first: by the stream's router, or by the trigger's own hook."""
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        if stream == "kept-open":
            harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, task_trigger(callback_queue, aws_conn, arn))
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(1.5)
        token = harness.events_of(1)[0].event.payload["callback"]["token"]
        # The task had its callback and closed the step; then it defers again (a stale message).
        SageMakerCallbackHook(aws_conn_id=aws_conn).send_step_success(token, {"rows": 1}, execution_arn=arn)
        emulator.clear_requests()
        harness.add(2, task_trigger(callback_queue, aws_conn, arn))
        assert not await fired_within(harness, 2, 3)
        assert emulator.request_counts("sagemaker")["ListPipelineExecutionSteps"] >= 1
    assert emulator.step(arn, "Score")["StepStatus"] == "Succeeded"


async def test_a_restarted_task_in_another_triggerer_receives_its_message_when_the_hold_ends(
    harness_mode: str,
    emulator: CallbackEmulator,
    callback_queue: str,
    aws_conn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    # Another triggerer: its own poll loop and ledger (a stream of another connection to the
    # same queue, so that both run in this process without sharing anything).
    for key, value in emulator.airflow_connection("aws_elsewhere").items():
        monkeypatch.setenv(key, value)
    first = task_trigger(callback_queue, aws_conn, arn, hold=4)
    async with SharedStreamHarness(persist_delay=0.3) as here:
        here.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        here.add(1, first)
        assert await here.wait_for_events(1, within=20)
        await asyncio.sleep(1)
        async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.2) as elsewhere:
            restarted = trigger_for(callback_queue, "aws_elsewhere", pipeline_execution_arn=arn)
            elsewhere.add(2, owned_by(restarted, "run-a"))
            assert await elsewhere.wait_for_events(1, within=40)
            (again,) = elsewhere.events_of(2)
            assert again.at - here.events[0].at >= 3.5  # hidden until the hold ended
            assert again.event.payload["callback"]["message_id"] == original["MessageId"]
            assert again.event.payload["callback"]["receive_count"] >= 2
            await elsewhere.wait_for_resumes()
            assert emulator.queue_messages(callback_queue) == []
    assert len(here.events) == 1


async def test_the_original_of_a_hand_off_that_comes_back_is_kept_and_its_copies_deleted(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """The task is slow: the hold ends before it deletes; the message is handed back, not deleted."""
    (arn,) = start_many(emulator, callback_queue, 1)
    (original,) = emulator.queue_messages(callback_queue)
    slow = task_trigger(callback_queue, aws_conn, arn, hold=2)
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, slow)
        assert await harness.wait_for_events(1, within=20)
        # A copy of the token with another message id is deleted once the first is handed on.
        await asyncio.sleep(1)
        emulator.client("sqs").send_message(QueueUrl=callback_queue, MessageBody=original["Body"])
        for _ in range(40):
            await asyncio.sleep(0.25)
            left = emulator.queue_messages(callback_queue)
            if len(left) == 1 and int(left[0]["Attributes"]["ApproximateReceiveCount"]) >= 2:
                break
        (left,) = emulator.queue_messages(callback_queue)
        assert left["MessageId"] == original["MessageId"]
        assert int(left["Attributes"]["ApproximateReceiveCount"]) >= 2  # came back, handed back
        # The slow task finally deletes it, with the handles of its event.
        handles = harness.events_of(1)[0].event.payload["receipt_handles"]
        SageMakerCallbackHook(aws_conn_id=aws_conn).complete_handoff(callback_queue, handles)
    assert emulator.queue_messages(callback_queue) == []


async def test_hand_off_ledger_tells_copies_from_the_original_and_keeps_hand_offs() -> None:
    from airflow_sm_callback.protocol import CallbackMessage
    from airflow_sm_callback.protocol.routing import Claim, Delivery
    from airflow_sm_callback.triggers.handoffs import HandOffLedger

    body = {
        "token": "Ab3dE6gH9k",
        "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/x",
    }
    callback = CallbackMessage.from_body(json.dumps(body), message_id="m-1", receipt_handle="r-1")
    ledger = HandOffLedger(max_tokens=2, max_owners=1)
    run_a = TaskKey("d", "run-a", "wait")
    task = Delivery(callback, ("r-1",), ("m-1",), 1)
    assert ledger.record(task, Claim(1, hold=900, owner=run_a, deleted_by="triggerer")) is not None
    assert ledger.handed_on("Ab3dE6gH9k")
    assert not ledger.is_copy("Ab3dE6gH9k", "m-1")  # the original coming back
    assert ledger.is_copy("Ab3dE6gH9k", "m-2")  # another message of the token
    assert not ledger.is_copy("Ab3dE6gH9k", None)  # unknown: never taken for a copy
    assert not ledger.is_copy("Zz9yX8wV7u", "m-3")
    # The original comes back before its task succeeded: its new handles, and a new look.
    watched = ledger.came_back("Ab3dE6gH9k", ["r-1b"], 5)
    handoff = ledger.get(run_a)
    assert handoff is not None
    assert watched is handoff
    assert handoff.receipt_handles == ["r-1b"]
    assert handoff.message_ids == frozenset({"m-1"})
    assert not ledger.landed("Ab3dE6gH9k")
    handoff.landed = True
    assert ledger.landed("Ab3dE6gH9k")  # anything of it back is redundant now
    assert ledger.came_back("Ab3dE6gH9k", ["r-1c"], 5) is None  # landed: nothing to look at
    assert ledger.get(run_a) is handoff  # kept until forgotten
    ledger.forget(run_a)
    assert ledger.get(run_a) is None
    assert not ledger.landed("Ab3dE6gH9k")
    # A watcher's claim (deleted at once) is no task's hand-off; bounded sizes.
    watcher = Delivery(callback, ("r-1",), ("m-1",), 1)
    assert ledger.record(watcher, Claim(2, watcher=True)) is None
    assert ledger.get(run_a) is None
    assert ledger.landed("Ab3dE6gH9k")  # the asset event has it
    for i in range(3):
        other = CallbackMessage.from_body(json.dumps({**body, "token": f"Tk{i}aaaaaaa"}), message_id=f"o-{i}")
        owner = TaskKey("d", f"run-{i}", "wait")
        ledger.record(Delivery(other, (), (f"o-{i}",), 1), Claim(3, hold=900, owner=owner))
    assert not ledger.handed_on("Ab3dE6gH9k")
    assert ledger.get(TaskKey("d", "run-0", "wait")) is None
    assert ledger.get(TaskKey("d", "run-2", "wait")) is not None


async def test_a_hand_off_is_kept_until_its_hold_ends() -> None:
    from airflow_sm_callback.protocol import CallbackMessage
    from airflow_sm_callback.protocol.routing import Claim, Delivery
    from airflow_sm_callback.triggers.handoffs import HandOffLedger

    body = {
        "token": "Ab3dE6gH9k",
        "pipelineExecutionArn": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/x",
    }
    callback = CallbackMessage.from_body(json.dumps(body), message_id="m-1")
    ledger = HandOffLedger()
    owner = TaskKey("d", "run-a", "wait")
    ledger.record(Delivery(callback, ("r-1",), ("m-1",), 1), Claim(1, hold=1, owner=owner))
    assert ledger.get(owner) is not None
    assert ledger.kept_until() is not None
    await asyncio.sleep(0.6)
    ledger.given_again(owner, 1)  # given to its task again: kept a hold longer
    await asyncio.sleep(0.6)
    assert ledger.get(owner) is not None
    await asyncio.sleep(0.6)
    assert ledger.get(owner) is None
    assert ledger.kept_until() is None


# -- the stream deletes a task's messages once the task has its callback ----------------------


async def test_the_stream_deletes_handed_on_messages_in_batches_once_the_tasks_succeeded(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    arns = start_many(emulator, callback_queue, 25)
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=3.0) as harness:
        for i, arn in enumerate(arns):
            harness.add(i, task_trigger(callback_queue, aws_conn, arn, run_id=f"run-{i}"))
        assert await harness.wait_for_events(25, within=30)
        for i, arn in enumerate(arns):
            (fired,) = harness.events_of(i)
            assert fired.event.payload["callback"]["pipeline_execution_arn"] == arn
            assert fired.event.payload["deleted_by"] == "triggerer"
            assert fired.event.payload["receipt_handles"]
        # Persisted, the tasks not resumed yet: every message hidden, none deleted.
        await asyncio.sleep(2)
        assert emulator.request_counts("sqs", queue=callback_queue).get("DeleteMessageBatch", 0) == 0
        held = emulator.queue_messages(callback_queue)
        assert len(held) == 25
        assert all(m.get("InFlight") for m in held)
        await harness.wait_for_resumes(within=60)
    assert emulator.queue_messages(callback_queue) == []
    # The tasks deleted nothing themselves: the stream did, ten a request.
    assert emulator.request_counts("sqs", queue=callback_queue)["DeleteMessageBatch"] <= 5


@pytest.mark.parametrize("state", ["success", "skipped"])
async def test_a_task_s_messages_stay_hidden_until_it_succeeds(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, state: str
) -> None:
    """Failed (its retry will need the callback): kept. Succeeded, or skipped (it closed a stopping step): deleted."""
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness.add(1, task_trigger(callback_queue, aws_conn, arn))
        assert await harness.wait_for_events(1, within=20)
        owner = TaskKey("d", "run-a", "wait")
        harness.set_task_state(owner, "up_for_retry")
        await asyncio.sleep(7)  # the stream looked at the task at least twice
        (held,) = emulator.queue_messages(callback_queue)
        assert held.get("InFlight")
        assert emulator.request_counts("sqs", queue=callback_queue).get("DeleteMessageBatch", 0) == 0
        harness.set_task_state(owner, state)
        assert await queue_empty_within(emulator, callback_queue, 30)


@pytest.mark.parametrize("error", ["transient", "permanent"])
async def test_a_failed_delete_of_handed_on_messages_is_made_again(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, error: str
) -> None:
    """
    Transient (every attempt botocore makes answers 500): the stream tries again at its next
    look. Permanent: the message comes back when its hold ends, and is deleted then, since its
    task has the callback; either way it is never delivered again.
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.2) as harness:
        # A bystander keeps the stream polling throughout.
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        if error == "transient":
            emulator.inject_fault(
                "sqs", "DeleteMessageBatch", code="InternalFailure", http_status=500, count=6
            )
        else:
            emulator.inject_fault("sqs", "DeleteMessageBatch", code="AccessDenied", count=1)
        hold = 300 if error == "transient" else 6
        harness.add(1, task_trigger(callback_queue, aws_conn, arn, hold=hold))
        assert await harness.wait_for_events(1, within=20)
        await harness.wait_for_resumes(within=60)
        if error == "permanent":
            (left,) = emulator.queue_messages(callback_queue)
            assert left.get("InFlight")
        assert await queue_empty_within(emulator, callback_queue, 40)
    assert len(harness.events) == 1
    deletes = [
        r["status"]
        for r in emulator.requests("sqs", queue=callback_queue)
        if r["action"] == "DeleteMessageBatch"
    ]
    # Transient: deleted by the next attempt within 40 s, long before its 300-second hold ends.
    assert deletes == ([500] * 6 + [200] if error == "transient" else [400, 200])


async def test_the_first_waiting_trigger_makes_the_process_s_first_task_state_look(
    harness_mode: str, callback_queue: str, aws_conn: str
) -> None:
    """
    A triggerer's supervisor builds its in-process API on the first request that needs it
    (seconds of CPU): the first trigger that waits makes that request at once, long before a
    burst of callbacks, and no trigger makes it again.
    """
    from airflow_sm_callback.triggers import _process

    execution = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/x"
    looks: list[list[TaskKey]] = []
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness_source = _process.use_task_states(None)
        assert harness_source is not None

        async def recording(keys: Any) -> Any:
            looks.append(list(keys))
            return await harness_source(keys)

        _process.use_task_states(recording)
        for i in range(3):
            harness.add(i, task_trigger(callback_queue, aws_conn, f"{execution}{i}", run_id=f"run-{i}"))
        await asyncio.sleep(2)
        assert not harness.events
    assert looks == [[TaskKey("d", "run-0", "wait")]]


async def test_nothing_is_left_in_the_process_once_the_triggers_of_a_stream_end(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """The stream's state (ledger, confirmer, first look) goes once its triggers and holds have ended."""
    from airflow_sm_callback.triggers import _process

    arns = start_many(emulator, callback_queue, 2)
    key = trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arns[0]).shared_stream_key()
    assert key not in _process.states()
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.5) as harness:
        for i, arn in enumerate(arns):
            harness.add(i, task_trigger(callback_queue, aws_conn, arn, run_id=f"run-{i}", hold=10))
        assert await harness.wait_for_events(2, within=20)
        await asyncio.sleep(1)  # persisted and advanced
        state = _process.states()[key]
        assert state.ledger.kept_until() is not None  # two hand-offs kept for their holds
        await harness.wait_for_resumes()
        await asyncio.sleep(1)
        # The triggers fired and were cancelled, the stream stopped: only the holds keep it.
        assert not state.users
        assert state.local is None  # below 3.3 the provider's own poll has stopped too
        assert key in _process.states()
        for _ in range(60):
            if key not in _process.states():
                break
            await asyncio.sleep(0.25)
        assert key not in _process.states()
    assert emulator.queue_messages(callback_queue) == []


async def test_what_no_trigger_here_claims_goes_back_once_they_walked_it_not_after_the_persist(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    Several triggerers on one queue: a message that a trigger of another triggerer waits for is
    handed back as soon as every trigger here has walked its batch, even when the batch also
    holds a claimed callback whose event takes long to persist.
    """
    mine, theirs = start_many(emulator, callback_queue, 2)
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=8.0) as harness:
        harness.add(1, task_trigger(callback_queue, aws_conn, mine))
        harness.add(2, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=mine + "-other"))
        assert await harness.wait_for_events(1, within=20)
        # Back on the queue within seconds, long before the claimed event persists (8 s).
        assert await _visible_within(emulator, callback_queue, theirs, 4)
        (held,) = [
            m
            for m in emulator.queue_messages(callback_queue)
            if json.loads(m["Body"])["pipelineExecutionArn"] == mine
        ]
        assert held.get("InFlight")
        assert emulator.request_counts("sqs", queue=callback_queue).get("DeleteMessageBatch", 0) == 0


async def test_a_task_deferred_again_gets_its_callback_in_another_triggerer_before_the_hold_ends(
    harness_mode: str,
    emulator: CallbackEmulator,
    callback_queue: str,
    aws_conn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Airflow restarts a resumed task without its event; it defers again and its new trigger lands
    in another triggerer. The triggerer that handed the callback on sees the task deferred again
    and hands the hidden message back, so that it arrives in seconds, not when the hold ends.
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    for key, value in emulator.airflow_connection("aws_elsewhere").items():
        monkeypatch.setenv(key, value)
    owner = TaskKey("d", "run-a", "wait")
    async with SharedStreamHarness(persist_delay=0.3) as here:
        here.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        mine = task_trigger(callback_queue, aws_conn, arn, hold=300)
        here.add(1, mine)
        assert await here.wait_for_events(1, within=20)
        fired_at = here.events[0].at
        # Persisted: the task resumes, and the triggerer sees it out of its deferral.
        here.set_task_state(owner, "running")
        confirmer = _process.states()[mine.shared_stream_key()].confirmer
        for _ in range(100):
            if confirmer.rounds:
                break
            await asyncio.sleep(0.1)
        assert confirmer.rounds  # it has seen the task running
        here.set_task_state(owner, "deferred")  # restarted without its event, waiting again
        async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.2) as elsewhere:
            elsewhere.add(
                2, owned_by(trigger_for(callback_queue, "aws_elsewhere", pipeline_execution_arn=arn), "run-a")
            )
            assert await elsewhere.wait_for_events(1, within=40)
            (again,) = elsewhere.events_of(2)
            assert again.at - fired_at < 30  # not after the 300 s hold
            await elsewhere.wait_for_resumes()
            assert emulator.queue_messages(callback_queue) == []
    assert len(here.events) == 1


async def test_a_task_whose_event_is_not_persisted_yet_is_not_taken_for_restarted(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    The task stays deferred until the triggerer writes its event, which takes seconds on a
    loaded triggerer (and Airflow below 3.3 confirms no persist): the triggerer that handed the
    callback on does not take that for a restart, and hands nothing back; the message is
    deleted once the task succeeded.
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    mine = task_trigger(callback_queue, aws_conn, arn)
    async with SharedStreamHarness(persist_delay=9.0, resume_delay=0.5) as harness:
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, mine)
        assert await harness.wait_for_events(1, within=20)
        confirmer = _process.states()[mine.shared_stream_key()].confirmer
        await harness.wait_for_resumes(within=40)
        assert await queue_empty_within(emulator, callback_queue, 20)
    assert (confirmer.released, confirmer.deleted) == (0, 1)
    assert len(harness.events) == 1


async def test_a_task_in_its_resume_hold_is_not_taken_for_restarted(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    A trigger that claimed its callback yields its event only once its resume hold is over,
    its task deferred all along, for longer than the confirmer's grace: that is not a restart,
    nothing is handed back, and the message is deleted once the task succeeded (below Airflow
    3.3 the batch advances, and the watch begins, once the trigger yielded and left).
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    mine = task_trigger(callback_queue, aws_conn, arn)
    hold = HandOffConfirmer.UNPERSISTED_GRACE + 15  # past its looks at 20 s and 3 s after
    mine.not_before = time.time() + hold
    async with SharedStreamHarness(persist_delay=0.3, resume_delay=0.5) as harness:
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, mine)
        await _claimed(emulator, callback_queue, arn)
        confirmer = _process.states()[mine.shared_stream_key()].confirmer
        assert not await fired_within(harness, 1, hold - 3)
        assert await fired_within(harness, 1, 10)
        await harness.wait_for_resumes(within=30)
        assert await queue_empty_within(emulator, callback_queue, 30)
    assert (confirmer.released, confirmer.deleted) == (0, 1)


async def test_a_hand_off_taken_again_in_its_resume_hold_is_not_taken_for_restarted(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    A restarted task's new trigger takes its hand-off again in the same triggerer and waits out
    its resume hold, the task deferred all along: that is not a restart elsewhere, and nothing
    is handed back; the message is deleted once the task succeeded.
    """
    (arn,) = start_many(emulator, callback_queue, 1)
    first = task_trigger(callback_queue, aws_conn, arn)
    owner = TaskKey("d", "run-a", "wait")
    async with SharedStreamHarness(persist_delay=0.3) as harness:
        harness.add(0, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=arn + "0"))
        harness.add(1, first)
        assert await harness.wait_for_events(1, within=20)
        await asyncio.sleep(1.5)  # persisted, advanced, trigger cancelled: the task "resumes"
        harness.set_task_state(owner, "running")
        confirmer = _process.states()[first.shared_stream_key()].confirmer
        again = task_trigger(callback_queue, aws_conn, arn)
        again.not_before = time.time() + 9  # its resume hold
        harness.add(2, again)  # the task restarted without its event and deferred again
        assert not await fired_within(harness, 2, 7)
        assert await fired_within(harness, 2, 10)
        await asyncio.sleep(2)  # persisted: the task resumes, with its callback, and succeeds
        (held,) = emulator.queue_messages(callback_queue)
        assert held.get("InFlight")
        assert int(held["Attributes"]["ApproximateReceiveCount"]) == 1  # never handed back
        harness.set_task_state(owner, "success")
        assert await queue_empty_within(emulator, callback_queue, 30)
    assert confirmer.released == 0
    assert (
        harness.events_of(2)[0].event.payload["callback"] == harness.events_of(1)[0].event.payload["callback"]
    )


async def _visible_within(emulator: CallbackEmulator, queue_url: str, arn: str, seconds: float) -> bool:
    """
    Whether ``arn``'s message went back to the queue within ``seconds``: seen visible, or
    received again (a poll that waits takes it the moment it is back, as SQS does, often before
    a look at the queue sees it visible).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(
            json.loads(m["Body"])["pipelineExecutionArn"] == arn
            and (not m.get("InFlight") or int(m["Attributes"]["ApproximateReceiveCount"]) > 1)
            for m in emulator.queue_messages(queue_url)
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def _claimed(emulator: CallbackEmulator, queue_url: str, arn: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(
            json.loads(m["Body"])["pipelineExecutionArn"] == arn and m.get("InFlight")
            for m in emulator.queue_messages(queue_url)
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the callback of {arn} was not claimed within {seconds} s")


async def test_a_trigger_in_its_resume_hold_holds_back_no_other_triggerer_s_message(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    A trigger that claimed its callback and waits out its resume hold walks no batch meanwhile:
    a message that arrives then, which a trigger of another triggerer waits for, still goes back
    to the queue at once, not when the hold ends.
    """
    (mine,) = start_many(emulator, callback_queue, 1)
    held = task_trigger(callback_queue, aws_conn, mine)
    held.not_before = time.time() + 15
    async with SharedStreamHarness(persist_delay=0.5) as harness:
        harness.add(1, held)
        harness.add(2, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=mine + "-other"))
        await _claimed(emulator, callback_queue, mine)
        (theirs,) = start_many(emulator, callback_queue, 1)
        # Received and handed back in seconds; the hold has 10 s and more to go.
        assert await _visible_within(emulator, callback_queue, theirs, 5)
        assert not harness.events_of(1)
        assert await harness.wait_for_events(1, within=30)
        assert harness.events_of(1)[0].event.payload["callback"]["pipeline_execution_arn"] == mine


async def test_a_stream_whose_triggers_all_fired_receives_nothing_more(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    Once every trigger of the stream in this triggerer fired (each waits out its resume hold, or
    for Airflow to end it), the stream stops receiving: a message that comes then is another
    triggerer's, which it would only pass on a receive later.
    """
    (mine,) = start_many(emulator, callback_queue, 1)
    held = task_trigger(callback_queue, aws_conn, mine)
    held.not_before = time.time() + 15
    async with SharedStreamHarness(persist_delay=0.5) as harness:
        harness.add(1, held)
        await _claimed(emulator, callback_queue, mine)
        state = _process.find(held.shared_stream_key())
        assert state is not None
        for _ in range(100):
            if not state.someone_waits:
                break
            await asyncio.sleep(0.1)
        assert not state.someone_waits  # the trigger fired: it waits out its hold
        await asyncio.sleep(0.5)
        emulator.clear_requests()
        (theirs,) = start_many(emulator, callback_queue, 1)
        await asyncio.sleep(4)
        # The long poll already waiting when the trigger fired may take it, and hands it back at
        # once; no receive follows.
        (left,) = [
            m
            for m in emulator.queue_messages(callback_queue)
            if json.loads(m["Body"])["pipelineExecutionArn"] == theirs
        ]
        assert not left.get("InFlight")
        assert int(left["Attributes"]["ApproximateReceiveCount"]) <= 1
        assert emulator.request_counts("sqs", queue=callback_queue).get("ReceiveMessage", 0) <= 1
        await asyncio.sleep(3)
        assert emulator.request_counts("sqs", queue=callback_queue).get("ReceiveMessage", 0) <= 1
        # A trigger that waits again makes it receive.
        harness.add(2, trigger_for(callback_queue, aws_conn, pipeline_execution_arn=theirs))
        assert await harness.wait_for_events(2, within=20)
