"""Deferrable sensors under the real scheduler, triggerer, DAG processor and API server, on each executor."""

from __future__ import annotations

import random
import re
import time

import pytest

from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique
from tests.system.airflow_run import token_scan_text
from tests.system.stack import AirflowStack

pytestmark = [pytest.mark.system, pytest.mark.xdist_group("stack")]


def stream_deletes(stack: AirflowStack, at_least: int = 0, within: float = 30) -> int:
    """
    Messages the triggerer deleted once their tasks succeeded, so far; waiting up to ``within``
    seconds for ``at_least`` (a line reaches the log file a while after its delete is done:
    the trigger runner's process hands it to its supervisor, which writes it).
    """
    deadline = time.monotonic() + within
    while True:
        text = stack.log_path("triggerer").read_text(errors="replace")
        deleted = sum(
            int(n) for n in re.findall(r"Deleted (\d+) messages of callbacks whose tasks have them", text)
        )
        if deleted >= at_least or time.monotonic() > deadline:
            return deleted
        time.sleep(0.5)


def released_handoffs(stack: AirflowStack) -> int:
    """Hand-offs the triggerer released so far, taking their tasks for restarted."""
    return (
        stack.log_path("triggerer")
        .read_text(errors="replace")
        .count("its task was restarted and waits again")
    )


def queue_empty_within(emulator: CallbackEmulator, queue_url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while emulator.queue_messages(queue_url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_concurrent_runs_each_get_their_own_callback(
    emulator: CallbackEmulator, callback_queue: str, any_stack: AirflowStack
) -> None:
    stack = any_stack
    emulator.reset()
    stack.wait_for_dag("sensor_deferrable")
    deleted_before = stream_deletes(stack)
    released_before = released_handoffs(stack)
    count = 12
    runs = {f"{unique('run')}-{i}": i for i in range(count)}
    stack.trigger_all(
        "sensor_deferrable",
        {run_id: {"queue_url": callback_queue, "arguments": {"run": i}} for run_id, i in runs.items()},
    )
    # Each run waits for the execution whose callback carries its own number; the executions
    # start in random order and share the queue.
    arns: dict[int, str] = {}
    order = list(range(count))
    random.shuffle(order)
    for i in order:
        name = unique("pipe")
        emulator.create_pipeline(
            name, callback_definition(callback_queue, outputs={"echo": "String"}, arguments={"run": i})
        )
        arns[i] = emulator.start_execution(name)

    states = stack.wait_for_runs("sensor_deferrable", list(runs), within=300)
    assert set(states.values()) == {"success"}, states
    for run_id, i in runs.items():
        callback = stack.xcom("sensor_deferrable", run_id, "wait")
        assert callback["arguments"] == {"step_name": "score", "run": i}
        assert callback["pipeline_execution_arn"] == arns[i]
    for arn in arns.values():
        assert emulator.wait_for_execution(arn, timeout=30) == "Succeeded"
        outputs = emulator.step(arn, "Score")["Metadata"]["Callback"]["OutputParameters"]
        assert outputs == [{"Name": "echo", "Value": "score"}]
    # The triggerer deletes the messages once the sensors succeeded, many at a time.
    assert queue_empty_within(emulator, callback_queue, 60)
    counts = emulator.request_counts("sqs", queue=callback_queue)
    # The triggers share one poll loop: far fewer receives than waits times polls.
    assert counts["ReceiveMessage"] < 6 * count, counts
    logs = stack.logs()
    assert "Callback for" in logs
    # Sensors that found their callback before deferring deleted it themselves; the messages
    # of those whose trigger fired were deleted by the triggerer.
    fired = [
        run_id
        for run_id in runs
        if "Callback for"
        in "".join(p.read_text() for p in stack.task_logs("sensor_deferrable", run_id, "wait"))
    ]
    assert fired
    assert stream_deletes(stack, at_least=deleted_before + len(fired)) - deleted_before == len(fired)
    # No task was restarted: none of the tasks still deferred until their events were written
    # was taken for one (which hands its message back, to be deleted later as stale).
    assert released_handoffs(stack) == released_before
    for arn in arns.values():
        token = emulator.step(arn, "Score")["Metadata"]["Callback"]["CallbackToken"]
        assert token not in token_scan_text(logs)


def test_a_restarted_sensor_that_knows_its_execution_recovers_the_token(
    emulator: CallbackEmulator, callback_queue: str, any_stack: AirflowStack
) -> None:
    """
    Airflow restarts a resumed sensor without its event (``rel_restarted`` reschedules its first
    resume); knowing its execution, the sensor takes the token from the execution's steps at
    once, in whichever triggerer or worker it lands, without waiting for its message.
    """
    stack = any_stack
    emulator.reset()
    emulator.configure(step_delay_seconds=8)  # the callback arrives once the sensor deferred
    stack.wait_for_dag("rel_restarted")
    name = unique("pipe")
    emulator.create_pipeline(
        name,
        callback_definition(callback_queue, outputs={"echo": "String"}, first_step="Prepare"),
    )
    arn = emulator.start_execution(name)
    run_id = unique("restarted")
    stack.trigger("rel_restarted", {"queue_url": callback_queue, "execution_arn": arn}, run_id)
    states = stack.wait_for_runs("rel_restarted", [run_id], within=240)
    emulator.configure(step_delay_seconds=0)
    assert states == {run_id: "success"}
    callback = stack.xcom("rel_restarted", run_id, "wait")
    assert callback["pipeline_execution_arn"] == arn
    assert callback["step_name"] == "Score"
    assert callback["arguments"] == {"step_name": "score"}
    assert emulator.wait_for_execution(arn, timeout=30) == "Succeeded"
    assert emulator.step(arn, "Score")["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "echo", "Value": "score"}
    ]
    logs = stack.logs()
    assert f"Recovered the callback of step Score of {arn}" in logs
    # The message stayed hidden through the restart; once the task succeeded (with the token
    # recovered from the steps) the triggerer that handed it on deleted it.
    assert queue_empty_within(emulator, callback_queue, 60)
