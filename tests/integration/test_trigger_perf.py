"""
The trigger's performance fixes keep its behaviour: batched token masking, the per-execution
index of a batch, receiving beside broadcasting, de-duplicated batch calls. No timings asserted.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
from typing import Any

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import register_tokens
from airflow_sm_callback.protocol import CallbackMatcher, CallbackMessage, routing
from airflow_sm_callback.protocol.routing import Delivery
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing.triggerer import SharedStreamHarness
from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger
from airflow_sm_callback.triggers.desk import CallbackBatch, TokenMasker
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration

ARN = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/{}"


def token() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=10))


SecretsMasker = _airflow.masker_class()


@pytest.fixture
def masker(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh masker in place of the process's."""
    fresh = SecretsMasker()
    monkeypatch.setattr(_airflow.masker_module(), "_secrets_masker", lambda: fresh)
    return fresh


def test_register_tokens_masks_like_add_mask(masker: Any) -> None:
    masker.add_mask("already-known-secret")
    tokens = [token() for _ in range(50)] + ["airflow", "", "abc", "already-known-secret"]
    register_tokens(tokens)
    reference = SecretsMasker()
    reference.add_mask("already-known-secret")
    for t in tokens:
        reference.add_mask(t)
    assert masker.patterns == reference.patterns
    line = " ".join(tokens[:50])
    assert masker.replacer is not None
    assert masker.replacer.sub("***", line) == reference.replacer.sub("***", line)
    assert not any(t in masker.replacer.sub("***", line) for t in tokens[:50])


def test_register_tokens_falls_back_for_another_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherMasker:
        def __init__(self) -> None:
            self.masked: list[str] = []

        def add_mask(self, secret: str) -> None:
            self.masked.append(secret)

    other = OtherMasker()
    monkeypatch.setattr(_airflow.masker_module(), "_secrets_masker", lambda: other)
    register_tokens(["Ab3dE6gH9k", "Zz9yX8wV7u"])
    assert other.masked == ["Ab3dE6gH9k", "Zz9yX8wV7u"]


async def test_claims_of_one_turn_share_one_registration(
    masker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    async def recording(tokens: list[str]) -> None:
        calls.append(list(tokens))

    monkeypatch.setattr(_airflow, "amask_secrets", recording)
    token_masker = TokenMasker()
    tokens = [token() for _ in range(20)]
    await asyncio.gather(*(token_masker.mask(t) for t in tokens))
    await token_masker.mask("Ab3dE6gH9k")
    assert calls == [tokens, ["Ab3dE6gH9k"]]


def delivery(execution: str, handles: list[str] | None = None) -> Delivery:
    callback = CallbackMessage.from_body(
        json.dumps({"token": token(), "pipelineExecutionArn": ARN.format(execution)})
    )
    return Delivery(
        callback=callback, receipt_handles=tuple(handles or [token()]), message_ids=(), receive_count=1
    )


def test_batch_index_by_execution() -> None:
    deliveries = [delivery("a"), delivery("b"), delivery("a")]
    batch = CallbackBatch.of(1, deliveries, desk=None)  # type: ignore[arg-type]
    assert list(batch.for_execution(ARN.format("a"))) == [deliveries[0], deliveries[2]]
    assert list(batch.for_execution(ARN.format("b"))) == [deliveries[1]]
    assert list(batch.for_execution(ARN.format("c"))) == []


def test_visibility_changes_never_repeat_a_receipt_handle() -> None:
    # A batch call fails whole when a receipt handle appears twice in it: a handle is deleted or
    # changed once, a delete wins, and the last visibility given to a handle is the one applied.
    delete = routing.Decision(routing.Verdict.DELETE, routing.Reason.STALE, ("a", "b", "a"))
    backs = [
        routing.Decision(routing.Verdict.HAND_BACK, routing.Reason.UNWANTED, (handle,), seconds)
        for handle, seconds in [("b", 0), ("c", 0), ("c", 2)]
    ]
    deletes, changes = routing.visibility_changes([delete, *backs])
    assert deletes == ["a", "b"]
    assert changes == [("c", 2)]


def trigger_for(queue_url: str, arn: str, **kwargs: Any) -> SageMakerCallbackTrigger:
    return SageMakerCallbackTrigger(
        queue_url=queue_url,
        matcher=CallbackMatcher(pipeline_execution_arn=arn),
        aws_conn_id="aws_default",
        single_event=True,
        **kwargs,
    )


async def test_a_burst_just_over_one_receive_is_drained_in_a_few_receives(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    """
    A full receive starts the drain with one receiver, one more for every full receive after:
    15 messages cost a full receive and a short one (and the short receives of the receivers
    in flight then), not eight receivers' worth.
    """
    name = unique("drain")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    arns = [emulator.start_execution(name) for _ in range(15)]
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=0.2, resume_delay=0.2) as harness:
        for i, arn in enumerate(arns):
            harness.add(i, trigger_for(callback_queue, arn, deadline=None))
        assert await harness.wait_for_events(len(arns), within=30)
        receives = emulator.request_counts("sqs", queue=callback_queue)["ReceiveMessage"]
        await harness.wait_for_resumes()
    assert sorted(e.event.payload["callback"]["pipeline_execution_arn"] for e in harness.events) == sorted(
        arns
    )
    # Eight receivers at once made nine receives or more.
    assert receives <= 4


async def test_burst_on_a_shared_stream_reaches_every_trigger_once(
    harness_mode: str, emulator: CallbackEmulator, callback_queue: str, aws_conn: str, masker: Any
) -> None:
    # More than one receive's worth, sent while the triggers wait: the producer drains the burst
    # with receives at once, beside the broadcasts; every message stays hidden once persisted,
    # until its task deletes it.
    name = unique("burst")
    emulator.create_pipeline(name, callback_definition(callback_queue))
    arns = [emulator.start_execution(name) for _ in range(45)]
    bodies = [m["Body"] for m in emulator.queue_messages(callback_queue)]
    emulator.purge_queue(callback_queue)
    emulator.clear_requests()
    async with SharedStreamHarness(persist_delay=0.5, resume_delay=0.5) as harness:
        for i, arn in enumerate(arns):
            harness.add(i, trigger_for(callback_queue, arn, deadline=None))
        await asyncio.sleep(1)
        sqs = emulator.client("sqs")
        for start in range(0, len(bodies), 10):
            sqs.send_message_batch(
                QueueUrl=callback_queue,
                Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])],
            )
        assert await harness.wait_for_events(len(arns), within=60)
        await asyncio.sleep(2)
        counts = emulator.request_counts("sqs", queue=callback_queue)
        # The stream hides what it handed on, in batches; it deletes nothing the tasks need.
        assert counts["ChangeMessageVisibilityBatch"] <= 15
        await harness.wait_for_resumes()
        assert not harness.failures
    fired = {e.trigger_id: e.event.payload["callback"] for e in harness.events}
    assert len(harness.events) == len(arns)
    for i, arn in enumerate(arns):
        assert fired[i]["pipeline_execution_arn"] == arn
        assert re.escape(fired[i]["token"]) in masker.patterns
    assert emulator.queue_messages(callback_queue) == []
    assert emulator.request_counts("sqs", queue=callback_queue)["DeleteMessageBatch"] == len(
        arns
    )  # one per task
