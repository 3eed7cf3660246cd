"""
One waiting process: N waits on one queue, in a fresh interpreter, driven over stdin/stdout.

``python -m bench.worker`` reads one JSON line (the scenario), starts the waits, prints
``READY {...}`` once every wait is established, then:

* ``burst``: reads ``GO <epoch>`` (the parent has just sent the messages) and waits until every
  wait fired or ``time_limit`` seconds after that moment;
* ``idle``: reads ``STOP``.

It then prints one JSON line: when each wait fired (epoch seconds, by execution ARN), its peak
RSS and how late its event loop ran. Its log goes to stderr.

The waits:

* ``ours``: :class:`~airflow_sm_callback.triggers.callback.SageMakerCallbackTrigger`, one per
  execution and task instance, through Airflow's ``SharedStreamManager`` as the triggerer runs
  them (:class:`~airflow_sm_callback.testing.triggerer.SharedStreamHarness`), each event
  confirmed persisted ``persist_delay`` seconds after it fired; ``resume_delay`` seconds later
  the resumed task succeeds with the callback in XCom, and the stream, which reads the task
  instances' states as it does from the triggerer's supervisor, deletes the messages of the
  tasks that succeeded, many at a time; every request a callback costs is counted;
* ``amazon`` / ``amazon-vis0``: the amazon provider's ``SqsSensorTrigger``, one ``run()`` task
  per wait in this event loop, as one triggerer runs triggers without a shared stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import resource
import sys
import time
from types import SimpleNamespace
from typing import Any

from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

from airflow_sm_callback.protocol import CallbackMatcher
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing.triggerer import SharedStreamHarness
from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger

#: A sensor's default ``timeout`` (seven days): the deadline the sensor gives its trigger.
SENSOR_TIMEOUT = 7 * 24 * 3600
#: The sensor's default ``poke_interval``, which the deferrable ``SqsSensor`` passes as ``waiter_delay``.
AMAZON_WAITER_DELAY = 60


class CountingSqsTrigger(SqsSensorTrigger):
    """``SqsSensorTrigger`` unchanged, but telling when it first polls (its wait is established)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polling = asyncio.Event()

    async def poll_sqs(self, client: Any) -> Any:
        self.polling.set()
        return await super().poll_sqs(client)


def amazon_trigger(queue_url: str, arn: str, visibility_timeout: int | None) -> CountingSqsTrigger:
    """The amazon trigger as a careful user configures it to wait for one execution's callback."""
    return CountingSqsTrigger(
        sqs_queue=queue_url,
        aws_conn_id="aws_default",
        max_messages=10,
        num_batches=1,
        wait_time_seconds=20,
        visibility_timeout=visibility_timeout,
        message_filtering="jsonpath",
        message_filtering_match_values=[arn],
        message_filtering_config="pipelineExecutionArn",
        delete_message_on_reception=True,
        waiter_delay=AMAZON_WAITER_DELAY,
    )


class LagMonitor:
    """How late the event loop wakes a 50 ms sleep (a busy loop delays every wait in it)."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.recent_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.05)
            self.recent_lag = loop.time() - before - 0.05
            self.max_lag = max(self.max_lag, self.recent_lag)

    async def settled(self, quiet_for: float = 1.0, at_most: float = 120.0) -> None:
        """Wait until the loop has run on time for ``quiet_for`` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + at_most
        quiet_since = loop.time()
        while loop.time() < give_up:
            await asyncio.sleep(0.1)
            if self.recent_lag > 0.05:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= quiet_for:
                return

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def read_line() -> str:
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(tag: str, payload: dict[str, Any]) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


async def run_ours(config: dict[str, Any], lag: LagMonitor) -> dict[str, Any]:
    arns: list[str] = config["arns"]
    queue_url: str = config["queue_url"]
    burst_cpu: float | None = None
    started = time.monotonic()
    to_epoch = time.time() - time.monotonic()
    fired: dict[str, float] = {}
    receives: dict[str, int] = {}
    async with SharedStreamHarness(
        persist_delay=config["persist_delay"], ack_timeout=300.0, resume_delay=config["resume_delay"]
    ) as harness:
        for i, arn in enumerate(arns):
            # As the sensor defers it: one execution, fire once, a deadline (its default timeout).
            trigger = SageMakerCallbackTrigger(
                queue_url=queue_url,
                matcher=CallbackMatcher(pipeline_execution_arn=arn),
                aws_conn_id="aws_default",
                single_event=True,
                deadline=time.time() + SENSOR_TIMEOUT,
            )
            # The task instance it fires for, as the triggerer sets it.
            trigger.task_instance = SimpleNamespace(
                dag_id="bench", run_id=f"run-{i}", task_id="wait", map_index=-1
            )
            harness.add(i, trigger)
        for j in range(config.get("sentinels", 0)):
            # Waits whose callback never comes: they keep the shared poll running after the
            # others fired, as a triggerer's other waits on the queue do.
            sentinel = SageMakerCallbackTrigger(
                queue_url=queue_url,
                matcher=CallbackMatcher(
                    pipeline_execution_arn=f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/none/execution/s{j}"
                ),
                aws_conn_id="aws_default",
                single_event=True,
                deadline=time.time() + SENSOR_TIMEOUT,
            )
            sentinel.task_instance = SimpleNamespace(
                dag_id="bench", run_id=f"sentinel-{j}", task_id="wait", map_index=-1
            )
            harness.add(len(arns) + j, sentinel)
        # The shared poll starts with the first subscriber; give its first long poll time to go out.
        await asyncio.sleep(1.0)
        await lag.settled()
        say("READY", {"ready_seconds": time.monotonic() - started})
        command = await read_line()
        if command.startswith("GO"):
            t0 = float(command.split()[1])
            deadline = t0 + config["time_limit"]
            cpu_at_go = cpu_now()
            await harness.wait_for_events(len(arns), within=max(0.0, deadline - time.time()))
            burst_cpu = cpu_now() - cpu_at_go
            for event in harness.events:
                payload = event.event.payload
                if payload.get("status") == "success":
                    arn = payload["callback"]["pipeline_execution_arn"]
                    fired.setdefault(arn, event.at + to_epoch)
                    # SQS's receive count when the waiter's triggerer received it: how many
                    # receives it took to reach the waiter.
                    receives.setdefault(arn, int(payload["callback"].get("receive_count") or 1))
            # Let the persist confirmations, the advances and the tasks' deletes finish.
            emulator = CallbackEmulator.connect(config["endpoint_url"])
            drain_until = time.monotonic() + config["persist_delay"] + config["resume_delay"] + 30
            while time.monotonic() < drain_until:
                await asyncio.sleep(0.5)
                if not emulator.queue_messages(queue_url):
                    break
            with contextlib.suppress(TimeoutError):
                await harness.wait_for_resumes(within=max(1.0, drain_until - time.monotonic()))
            # Several triggerers: keep waiting (the shared poll running) until the others are done
            # with what is left on the queue.
            await asyncio.sleep(max(0.0, t0 + config.get("stay_after_go", 0.0) - time.time()))
        failures = {str(k): repr(v) for k, v in harness.failures.items()}
    return {"fired": fired, "receives": receives, "failures": failures, "burst_cpu_s": burst_cpu}


async def run_amazon(config: dict[str, Any], lag: LagMonitor) -> dict[str, Any]:
    arns: list[str] = config["arns"]
    visibility = 0 if config["kind"] == "amazon-vis0" else None
    started = time.monotonic()
    fired: dict[str, float] = {}
    failures: dict[str, str] = {}
    all_fired = asyncio.Event()

    async def drive(arn: str, trigger: CountingSqsTrigger) -> None:
        try:
            async for event in trigger.run():
                if event.payload.get("status") == "success":
                    fired[arn] = time.time()
                break
        except asyncio.CancelledError:
            raise
        except Exception as err:
            failures[arn] = repr(err)
            trigger.polling.set()  # not waiting any more: do not hold up the start
        if len(fired) + len(failures) == len(arns):
            all_fired.set()

    triggers = {arn: amazon_trigger(config["queue_url"], arn, visibility) for arn in arns}
    tasks = [asyncio.create_task(drive(arn, trigger)) for arn, trigger in triggers.items()]
    for trigger in triggers.values():
        await trigger.polling.wait()
    await lag.settled()
    say("READY", {"ready_seconds": time.monotonic() - started})
    command = await read_line()
    burst_cpu: float | None = None
    if command.startswith("GO"):
        t0 = float(command.split()[1])
        deadline = t0 + config["time_limit"]
        cpu_at_go = cpu_now()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_fired.wait(), max(0.0, deadline - time.time()))
        burst_cpu = cpu_now() - cpu_at_go
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"fired": fired, "failures": failures, "burst_cpu_s": burst_cpu}


async def main_async(config: dict[str, Any]) -> dict[str, Any]:
    lag = LagMonitor()
    lag.start()
    try:
        if config["kind"] == "ours":
            result = await run_ours(config, lag)
        else:
            result = await run_amazon(config, lag)
    finally:
        lag.stop()
    result["max_loop_lag_s"] = lag.max_lag
    return result


def main() -> int:
    config = json.loads(sys.stdin.readline())
    profile_to = os.environ.get("BENCH_PROFILE_DIR")
    if profile_to:
        # Development aid: a cProfile of the waiting process, one file per scenario.
        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, main_async(config))
        profiler.dump_stats(
            os.path.join(profile_to, f"{config['kind']}-{config['mode']}-{len(config['arns'])}.prof")
        )
    else:
        result = asyncio.run(main_async(config))
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    say("RESULT", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
