"""
Reliability scenarios: real Airflow processes against the emulator, with faults injected.

Each scenario starts ``n`` DAG runs that wait on one queue, each for its own callback (the
callback's ``run`` argument), injects its fault, and counts what happened from the emulator's
side: callbacks delivered to their own run and closed, callbacks lost (a run that did not get
its callback, or a step left open), steps closed twice (more than one close accepted for a
token), and how long recovery took.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.protocol import CallbackMatcher
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import unique
from tests.system.stack import AirflowStack

#: A pipeline whose callback step carries the run number it belongs to.
DEFINITION: dict[str, Any] = {
    "Version": "2020-12-01",
    "Parameters": [
        {"Name": "Queue", "Type": "String", "DefaultValue": ""},
        {"Name": "Run", "Type": "Integer", "DefaultValue": 0},
    ],
    "Steps": [
        {
            "Name": "Score",
            "Type": "Callback",
            "Arguments": {
                "run": {"Get": "Parameters.Run"},
                "step_name": {"Std:Join": {"On": "-", "Values": ["run", {"Get": "Parameters.Run"}]}},
            },
            "SqsQueueUrl": {"Get": "Parameters.Queue"},
            "OutputParameters": [{"OutputName": "echo", "OutputType": "String"}],
        }
    ],
}


@dataclass
class Outcome:
    """One row of the reliability table."""

    scenario: str
    injected: str
    callbacks: int
    delivered: int = 0
    lost: int = 0
    closed_twice: int = 0
    recovery_seconds: float | None = None
    #: Messages left on the queue once every run ended, all of closed steps (a delete that an
    #: injected error failed), and deleted by the next receive of any waiter.
    stale_swept: int = 0
    #: Resumed tasks that failed to start, which Airflow then restarted without their event
    #: ("... during start up" in the task logs), and hand-offs that restarted sensors' triggers
    #: took again from their triggerer.
    startup_failures: int = 0
    taken_again: int = 0
    #: Sensors that needed a try after the first (Airflow failed or reset the task).
    retried: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Where it ran: the Airflow version, the executor, the resume hold the sensors used.
    airflow: str = ""
    executor: str = ""
    resume_hold: str = ""
    #: Resumed tasks the scheduler failed because it learnt of the deferring process's end only
    #: after the resume ("... finished with state success, but the task instance's state
    #: attribute is running"): the race the resume hold works around.
    resume_races: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """``n`` runs of one DAG waiting on one queue, and the executions that answer them."""

    stack: AirflowStack
    emulator: CallbackEmulator
    dag_id: str
    queue_url: str
    runs: dict[str, int] = field(default_factory=dict)
    arns: dict[int, str] = field(default_factory=dict)
    pipeline: str = field(default_factory=lambda: unique("rel"))

    def trigger(self, n: int) -> None:
        self.stack.wait_for_dag(self.dag_id)
        self.emulator.create_pipeline(self.pipeline, DEFINITION)
        runs = {f"{unique('rel')}-{i}": i for i in range(n)}
        self.stack.trigger_all(
            self.dag_id,
            {run_id: {"queue_url": self.queue_url, "arguments": {"run": i}} for run_id, i in runs.items()},
        )
        self.runs.update(runs)

    def wait_until_waiting(self, state: str = "deferred", within: float | None = None) -> None:
        """Wait until every run's sensor is in ``state`` (by default within 5 s a run, 300 s at least)."""
        within = within if within is not None else max(300.0, 5.0 * len(self.runs))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            states = [
                self.stack.task_instances(self.dag_id, run_id).get("wait", {}).get("state")
                for run_id in self.runs
            ]
            if all(s == state for s in states):
                return
            time.sleep(1)
        raise TimeoutError(f"the sensors did not all reach {state!r} within {within:.0f}s")

    def answer(self, duplicate: bool = False) -> float:
        """Start every execution (each sends its callback); return when the last was sent."""
        for i in self.runs.values():
            self.arns[i] = self.emulator.start_execution(self.pipeline, {"Queue": self.queue_url, "Run": i})
        if duplicate:
            sqs = self.emulator.client("sqs")
            for message in self.emulator.queue_messages(self.queue_url):
                sqs.send_message(QueueUrl=self.queue_url, MessageBody=message["Body"])
        return time.monotonic()

    def settle(self, outcome: Outcome, since: float, within: float = 600) -> Outcome:
        """Wait for the runs, then count what reached whom, what was lost and what closed twice."""
        states = self.stack.wait_for_runs(self.dag_id, list(self.runs), within=within)
        done_at = time.monotonic()
        delivered = 0
        for run_id, i in self.runs.items():
            wait = self.stack.task_instances(self.dag_id, run_id).get("wait", {})
            if (wait.get("try_number") or 1) > 1:
                outcome.retried += 1
            if states.get(run_id) != "success":
                outcome.notes.append(f"run {i} ended {states.get(run_id)}")
                continue
            callback = self.stack.xcom(self.dag_id, run_id, "wait")
            if callback["arguments"].get("run") == i and callback["pipeline_execution_arn"] == self.arns.get(
                i
            ):
                delivered += 1
            else:
                outcome.notes.append(f"run {i} got the callback of run {callback['arguments'].get('run')}")
        open_steps = 0
        for i, arn in self.arns.items():
            step = self.emulator.step(arn, "Score")
            if step["StepStatus"] != "Succeeded":
                open_steps += 1
                outcome.notes.append(f"execution of run {i}: step {step['StepStatus']}")
            elif step["Metadata"]["Callback"]["OutputParameters"] != [{"Name": "echo", "Value": f"run-{i}"}]:
                outcome.notes.append(f"execution of run {i}: wrong outputs")
        outcome.delivered = delivered
        outcome.lost = max(len(self.runs) - delivered, open_steps)
        outcome.closed_twice = sum(1 for count in self.emulator.accepted_closes().values() if count > 1)
        outcome.recovery_seconds = round(done_at - since, 1)
        # The triggerers delete the messages of tasks that succeeded within seconds of their
        # success (every 10 s at most); anything left after that is stale.
        left = self.emulator.queue_messages(self.queue_url)
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = self.emulator.queue_messages(self.queue_url)
        if left:
            outcome.stale_swept = self.sweep()
            left = self.emulator.queue_messages(self.queue_url)
            if left:
                outcome.notes.append(f"{len(left)} messages left on the queue")
        return outcome

    def sweep(self, within: float = 150) -> int:
        """
        Receive as the next waiter on the queue would, wanting none of the callbacks: messages
        whose step is closed are deleted, any other is handed back. Returns how many were deleted.
        """
        before = len(self.emulator.queue_messages(self.queue_url))
        env = self.emulator.airflow_connection("reliability_sweep")
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            hook = SageMakerCallbackHook(aws_conn_id="reliability_sweep")
            nobody = CallbackMatcher(pipeline_name="nobody-waits-for-this")
            deadline = time.monotonic() + within
            while self.emulator.queue_messages(self.queue_url) and time.monotonic() < deadline:
                hook.poll_for_callback(self.queue_url, nobody, wait_time_seconds=1, max_lookups=10)
                time.sleep(1)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return before - len(self.emulator.queue_messages(self.queue_url))


def _timed(run: Callable[[Outcome], Outcome], outcome: Outcome) -> Outcome:
    """Run a scenario; one that cannot finish is a row that says why, with nothing counted delivered."""
    started = time.monotonic()
    try:
        return run(outcome)
    except Exception as err:
        outcome.notes.append(f"the scenario could not finish: {err}")
        outcome.delivered = 0
        outcome.lost = outcome.callbacks
        return outcome
    finally:
        outcome.seconds = round(time.monotonic() - started, 1)


def triggerer_killed(
    emulator: CallbackEmulator,
    stack: AirflowStack,
    n: int,
    *,
    mid_flight: bool = False,
    triggerer: str = "triggerer",
    name: str | None = None,
    dag_id: str = "sensor_deferrable",
) -> Outcome:
    """
    A triggerer is killed (SIGKILL) while ``n`` waits are deferred, then restarted.

    ``mid_flight``: the callbacks are sent first and the triggerer dies a second later, while it
    is receiving, claiming and persisting them; otherwise it dies before they are sent.
    ``triggerer``: which one, when the stack runs several (its waits go to the others once
    Airflow finds it dead, or to it again once it is back).
    """
    name = name or ("triggerer killed mid-flight" if mid_flight else "triggerer killed while waiting")
    outcome = Outcome(name, f"SIGKILL {triggerer}, restart it 5 s later", n)

    def run(outcome: Outcome) -> Outcome:
        batch = Batch(stack, emulator, dag_id, emulator.create_queue(unique("rel")))
        emulator.reset()
        batch.trigger(n)
        batch.wait_until_waiting()
        if mid_flight:
            batch.answer()
            time.sleep(1)
            stack.kill(triggerer, signal.SIGKILL)
        else:
            stack.kill(triggerer, signal.SIGKILL)
            batch.answer()
        time.sleep(5)
        stack.start_component("triggerer", name=triggerer)
        return batch.settle(outcome, since=time.monotonic())

    return _timed(run, outcome)


def worker_dies(emulator: CallbackEmulator, stack: AirflowStack, n: int) -> Outcome:
    """Each sensor's worker dies after taking its message and before handing it on."""
    outcome = Outcome("worker dies before the hand-off", "os._exit in the sensor after the receive", n)

    def run(outcome: Outcome) -> Outcome:
        batch = Batch(stack, emulator, "rel_worker_dies", emulator.create_queue(unique("rel")))
        emulator.reset()
        batch.trigger(n)
        sent = batch.answer()
        return batch.settle(outcome, since=sent)

    return _timed(run, outcome)


def aws_errors(emulator: CallbackEmulator, stack: AirflowStack, n: int, seconds: float = 30) -> Outcome:
    """SQS throttling and 500s, SageMaker throttling and conflicts, for ``seconds``."""
    outcome = Outcome(
        "AWS errors",
        f"{seconds:.0f} s of SQS throttling/500s (p=0.5) and SageMaker throttling; "
        "ConflictException and ResourceNotFound on the first closes",
        n,
    )

    def run(outcome: Outcome) -> Outcome:
        batch = Batch(stack, emulator, "rel_deferrable", emulator.create_queue(unique("rel")))
        emulator.reset()
        batch.trigger(n)
        batch.wait_until_waiting()
        for action, code, status in [
            ("ReceiveMessage", "ThrottlingException", 400),
            ("ReceiveMessage", "InternalFailure", 500),
            ("DeleteMessageBatch", "InternalFailure", 500),
            ("ChangeMessageVisibilityBatch", "ThrottlingException", 400),
        ]:
            emulator.inject_fault(
                "sqs", action, code=code, http_status=status, seconds=seconds, probability=0.5
            )
        emulator.inject_fault(
            "sagemaker",
            "ListPipelineExecutionSteps",
            code="ThrottlingException",
            seconds=seconds,
            probability=0.5,
        )
        emulator.inject_fault(
            "sagemaker",
            "DescribePipelineExecution",
            code="ThrottlingException",
            seconds=seconds,
            probability=0.5,
        )
        emulator.inject_fault(
            "sagemaker", "SendPipelineExecutionStepSuccess", code="ConflictException", count=max(1, n // 2)
        )
        emulator.inject_fault(
            "sagemaker", "SendPipelineExecutionStepSuccess", code="ResourceNotFound", count=max(1, n // 2)
        )
        sent = batch.answer()
        outcome = batch.settle(outcome, since=sent)
        if stack.processes["triggerer"].poll() is not None:
            outcome.notes.append("the triggerer exited")
        return outcome

    return _timed(run, outcome)


def _waiting_then_answered(
    emulator: CallbackEmulator,
    stack: AirflowStack,
    outcome: Outcome,
    *,
    duplicate: bool,
    within: float,
    dag_id: str = "rel_deferrable",
) -> Outcome:
    """``outcome.callbacks`` deferred runs on one queue, all waiting before their callbacks are sent."""

    def run(outcome: Outcome) -> Outcome:
        batch = Batch(stack, emulator, dag_id, emulator.create_queue(unique("rel")))
        emulator.reset()
        before = restart_marks(stack)
        races = resume_races(stack)
        batch.trigger(outcome.callbacks)
        batch.wait_until_waiting(within=within)
        sent = batch.answer(duplicate=duplicate)
        outcome = batch.settle(outcome, since=sent, within=within)
        after = restart_marks(stack)
        outcome.startup_failures = after[0] - before[0]
        outcome.taken_again = after[1] - before[1]
        outcome.resume_races = resume_races(stack) - races
        return outcome

    return _timed(run, outcome)


#: What the scheduler logs when it fails a task instance that resumed before it saw the
#: deferring process's end (Airflow 3.0.6 to 3.3.2: ``_process_executor_events``).
RACE_MARK = "but the task instance's state attribute is"


def resume_races(stack: AirflowStack) -> int:
    """How often, so far, the scheduler failed a resumed task instance in the resume race."""
    path = stack.log_path("scheduler")
    return path.read_text(errors="replace").count(RACE_MARK) if path.exists() else 0


def worker_killed(emulator: CallbackEmulator, stack: AirflowStack, n: int) -> Outcome:
    """
    CeleryExecutor: a worker is killed (SIGKILL, with its task processes) while the resumed
    sensors run on it, mid-hand-off, and restarted 5 s later. Airflow finds the tasks whose
    heartbeats stopped and retries them; each must still get its own callback.
    """
    outcome = Outcome("worker killed mid-hand-off", "SIGKILL a Celery worker while resumed sensors run", n)

    def run(outcome: Outcome) -> Outcome:
        batch = Batch(stack, emulator, "rel_deferrable", emulator.create_queue(unique("rel")))
        emulator.reset()
        batch.trigger(n)
        batch.wait_until_waiting()
        sent = batch.answer()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [
                batch.stack.task_instances(batch.dag_id, run_id).get("wait", {}).get("state")
                for run_id in batch.runs
            ]
            if any(s in ("queued", "running") for s in states):
                break
            time.sleep(0.5)
        stack.kill("worker-1", signal.SIGKILL)
        time.sleep(5)
        stack.start_worker("worker-1")
        return batch.settle(outcome, since=sent, within=1200)

    return _timed(run, outcome)


def restart_marks(stack: AirflowStack) -> tuple[int, int]:
    """How often, so far, a task failed to start, and a restarted task's trigger took its hand-off again."""
    logs = stack.logs()
    return (
        logs.count("not found during start up") + logs.count("not found in Dag during start up"),
        logs.count("taken again: it was handed to this task before it restarted"),
    )


def duplicates(emulator: CallbackEmulator, stack: AirflowStack, n: int) -> Outcome:
    """Every callback message delivered twice."""
    outcome = Outcome("duplicate deliveries", "every message sent twice", n)
    return _waiting_then_answered(emulator, stack, outcome, duplicate=True, within=600)


def load(emulator: CallbackEmulator, stack: AirflowStack, n: int, name: str = "load") -> Outcome:
    """
    ``n`` concurrent runs on one queue, no fault: all must complete with their own callback.

    Up to half an hour: on a small machine some resumed sensors fail to start and Airflow
    restarts them a minute later; one whose new trigger lands in the other triggerer receives its
    message when the default ``handoff_visibility`` (900 s) ends.
    """
    return _waiting_then_answered(emulator, stack, Outcome(name, "none", n), duplicate=False, within=1800)


def restarted(emulator: CallbackEmulator, stack: AirflowStack, n: int, name: str | None = None) -> Outcome:
    """
    Every resumed sensor is restarted from scratch without its trigger event, as Airflow does
    when a resumed task fails to start: the callback must still reach it.
    """
    outcome = Outcome(
        name or "resumed task restarted without its event",
        "each sensor's first resume rescheduled (the event dropped), as on a startup failure",
        n,
    )
    return _waiting_then_answered(
        emulator, stack, outcome, duplicate=False, within=600, dag_id="rel_restarted"
    )
