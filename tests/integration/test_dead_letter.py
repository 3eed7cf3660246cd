"""
Dead-letter queues on a shared callback queue: every hand-back by a waiter that does not want a
message counts toward ``maxReceiveCount``. A low limit moves live callbacks to the dead-letter
queue; the documented setting (1000, the SQS maximum) keeps them for their own waiter.
"""

from __future__ import annotations

import time

import pytest

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import CallbackMatcher
from airflow_sm_callback.protocol.routing import backoff_visibility
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration


def cycle_unwanted(hook: SageMakerCallbackHook, queue_url: str, times: int) -> None:
    """Other waiters receive the message and hand it back ``times`` times."""
    others = CallbackMatcher(pipeline_name="somebody-else")
    for receive in range(1, times + 1):
        hook.poll_for_callback(queue_url, others, wait_time_seconds=1, max_lookups=0)
        time.sleep(backoff_visibility(receive) + 0.2)


@pytest.mark.parametrize(("max_receive_count", "reaches_waiter"), [(3, False), (1000, True)])
def test_hand_backs_count_toward_max_receive_count(
    emulator: CallbackEmulator, aws_conn: str, max_receive_count: int, reaches_waiter: bool
) -> None:
    name = unique("dlq")
    queue_url = emulator.create_queue(name, dead_letter_max_receive_count=max_receive_count)
    pipeline = unique("pipe")
    emulator.create_pipeline(pipeline, callback_definition(queue_url))
    arn = emulator.start_execution(pipeline)
    hook = SageMakerCallbackHook(aws_conn_id=aws_conn)

    cycle_unwanted(hook, queue_url, 4)

    # Its own waiter starts late.
    claim = hook.poll_for_callback(
        queue_url, CallbackMatcher(pipeline_execution_arn=arn), wait_time_seconds=1
    )
    dead = emulator.queue_messages(emulator.dead_letter_queue_url(name))
    if reaches_waiter:
        assert claim is not None
        assert claim.callback.pipeline_execution_arn == arn
        assert claim.callback.receive_count == 5
        assert dead == []
    else:
        assert claim is None
        assert len(dead) == 1
        assert arn in dead[0]["Body"]
