"""
Section 3 of the benchmark: the real scheduler, triggerer, DAG processor and API server.

For each DAG of ``bench/dags`` in turn, ``runs`` DAG runs wait, each for its own execution's
callback, on one queue; once every sensor is deferred the callbacks are sent at once, and the
time from a callback's send to its sensor task's end (``end_date``, state ``success``) is
measured, with the SQS requests the emulator served meanwhile. A third DAG, whose deferrable
``DateTimeSensorAsync`` fires at a set moment, measures Airflow's own part: from the trigger event
to the succeeded task, with no provider involved. After a warm-up round, Airflow alone and this
project's sensor are measured in turn, twice each; the amazon sensor last.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    ROOT,
    Callbacks,
    consumer_requests,
    emulator_process,
    latency_figures,
    percentile,
    prepare_callbacks,
    send_at_once,
)

if TYPE_CHECKING:
    from airflow_sm_callback.testing import CallbackEmulator

sys.path.insert(0, str(ROOT))
from tests.system.stack import AirflowStack, postgres

DAGS_FOLDER = ROOT / "bench" / "dags"
#: The Airflow settings the run needs (``section__key``), set in the stack's environment.
SETTINGS = {
    # Every run active at once, every sensor task startable at once.
    "core__max_active_runs_per_dag": "64",
    "core__max_active_tasks_per_dag": "64",
    # LocalExecutor worker processes: the sensors start (and defer), later resume, in parallel.
    "core__parallelism": "32",
    # How many triggers the triggerer runs (Airflow's default, stated).
    "triggerer__capacity": "1000",
}
TASK_ID = "wait"


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text).timestamp()


def sensor_states(stack: AirflowStack, dag_id: str) -> dict[str, dict[str, Any]]:
    """run id -> the ``wait`` task instance, for every run of ``dag_id``."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = stack.request("GET", f"dags/{dag_id}/dagRuns/~/taskInstances?limit=100&offset={offset}")
        items = page["task_instances"]
        for ti in items:
            if ti["task_id"] == TASK_ID:
                found[ti["dag_run_id"]] = ti
        offset += len(items)
        if not items or offset >= page.get("total_entries", 0):
            return found


def wait_for_state(
    stack: AirflowStack, dag_id: str, run_ids: list[str], states: set[str], within: float
) -> dict[str, dict[str, Any]]:
    """Poll until every run's sensor is in one of ``states`` (or ``within`` seconds passed)."""
    deadline = time.monotonic() + within
    while True:
        try:
            tis = sensor_states(stack, dag_id)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            tis = {}
        if all(tis.get(r, {}).get("state") in states for r in run_ids) or time.monotonic() > deadline:
            return tis
        time.sleep(2)


def _log_time(line: str) -> tuple[float, str] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "timestamp" not in record:
        return None
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp(), str(
        record.get("event", "")
    )


def phases(stack: AirflowStack, dag_id: str, origins: dict[str, float]) -> dict[str, float | None]:
    """
    Where the time of the resumes went, from the task and trigger logs (p50 over the runs, in
    seconds): from the origin (callback sent, or target time) to the trigger event, from the
    event to the resumed task's start (Airflow: persist, schedule, queue, start a process), and
    the resumed task's run (parsing the DAG file, then ``execute_complete``).
    """
    to_event: list[float] = []
    to_start: list[float] = []
    running: list[float] = []
    for run_id, origin in origins.items():
        fired = start = end = None
        for path in stack.task_logs(dag_id, run_id, TASK_ID):
            times = [t for t in map(_log_time, path.read_text(errors="replace").splitlines()) if t]
            if ".trigger." in path.name:
                fired = next((at for at, event in times if event == "Trigger fired event"), fired)
                continue
            starts = [at for at, event in times if event == "::group::Pre Execute"]
            if len(starts) > 1:  # the first is the run that deferred
                start, end = starts[-1], times[-1][0]
        if fired is None or start is None or end is None:
            continue
        to_event.append(fired - origin)
        to_start.append(start - fired)
        running.append(end - start)
    return {
        "to_trigger_event_p50_s": percentile(to_event, 50),
        "event_to_task_start_p50_s": percentile(to_start, 50),
        "task_run_p50_s": percentile(running, 50),
    }


def _figures(latencies: list[float], runs: int, limit: float) -> dict[str, Any]:
    return {
        "runs": runs,
        "succeeded": len(latencies),
        "time_limit_s": limit,
        **latency_figures(latencies, runs),
    }


def run_callback_dag(
    stack: AirflowStack,
    emulator: CallbackEmulator,
    dag_id: str,
    callbacks: Callbacks,
    time_limit: float,
    settle: float,
) -> dict[str, Any]:
    """Runs wait for their callbacks; send them at once; time send -> sensor succeeded."""
    run_ids = {arn: f"bench-{i:03d}-{int(time.time())}" for i, arn in enumerate(callbacks.bodies)}
    emulator.clear_requests()
    for arn, run_id in run_ids.items():
        stack.trigger(dag_id, {"queue_url": callbacks.queue_url, "execution_arn": arn}, run_id)
    started = time.monotonic()
    tis = wait_for_state(stack, dag_id, list(run_ids.values()), {"deferred"}, within=600)
    deferred = sum(1 for r in run_ids.values() if tis.get(r, {}).get("state") == "deferred")
    deferred_after = time.monotonic() - started
    # The triggerer picks new triggers up within a few seconds (see SETTLE).
    time.sleep(settle)
    sent = send_at_once(emulator, callbacks)
    t0 = min(sent.values())
    tis = wait_for_state(
        stack, dag_id, list(run_ids.values()), {"success", "failed", "skipped"}, within=time_limit
    )
    latencies = []
    for arn, run_id in run_ids.items():
        ti = tis.get(run_id, {})
        end = _epoch(ti.get("end_date"))
        if ti.get("state") == "success" and end is not None and end - sent[arn] <= time_limit:
            latencies.append(end - sent[arn])
    # Count the deletes too: the triggerer deletes the messages of sensors that succeeded
    # within seconds of their success.
    settle_until = time.monotonic() + 60
    while emulator.queue_messages(callbacks.queue_url) and time.monotonic() < settle_until:
        time.sleep(1)
    left = len(emulator.queue_messages(callbacks.queue_url))
    counts = consumer_requests(emulator.request_counts("sqs"))
    result = _figures(latencies, len(run_ids), time_limit)
    result.update(
        {
            "dag_id": dag_id,
            "deferred_before_send": deferred,
            "seconds_to_defer_all": deferred_after,
            "send_spread_s": max(sent.values()) - t0,
            "sqs_requests": counts,
            "sqs_requests_total": sum(counts.values()),
            "messages_left": left,
            "sagemaker_requests": consumer_requests(emulator.request_counts("sagemaker")),
            "states": _count_states(tis, list(run_ids.values())),
            **phases(stack, dag_id, {run_ids[arn]: at for arn, at in sent.items()}),
        }
    )
    return result


def run_datetime_dag(stack: AirflowStack, runs: int, time_limit: float, lead: float) -> dict[str, Any]:
    """Airflow's own part: deferrable sensors firing at one moment; time moment -> succeeded."""
    dag_id = "bench_datetime_sensor"
    moment = datetime.now(UTC) + timedelta(seconds=lead)
    run_ids = [f"bench-{i:03d}-{int(time.time())}" for i in range(runs)]
    for run_id in run_ids:
        stack.trigger(dag_id, {"target_time": moment.isoformat()}, run_id)
    tis = wait_for_state(stack, dag_id, run_ids, {"deferred", "success"}, within=lead)
    deferred = sum(1 for r in run_ids if tis.get(r, {}).get("state") == "deferred")
    at = moment.timestamp()
    tis = wait_for_state(
        stack, dag_id, run_ids, {"success", "failed"}, within=max(0.0, at - time.time()) + time_limit
    )
    latencies = []
    for run_id in run_ids:
        ti = tis.get(run_id, {})
        end = _epoch(ti.get("end_date"))
        if ti.get("state") == "success" and end is not None and end - at <= time_limit:
            latencies.append(max(0.0, end - at))
    result = _figures(latencies, runs, time_limit)
    result.update(
        {
            "dag_id": dag_id,
            "deferred_before_send": deferred,
            "states": _count_states(tis, run_ids),
            **phases(stack, dag_id, dict.fromkeys(run_ids, at)),
        }
    )
    return result


def _count_states(tis: dict[str, dict[str, Any]], run_ids: list[str]) -> dict[str, int]:
    states: dict[str, int] = {}
    for run_id in run_ids:
        state = str(tis.get(run_id, {}).get("state"))
        states[state] = states.get(state, 0) + 1
    return states


#: Seconds between the last sensor deferring and the callbacks' send: the triggerer picks new
#: triggers up within a few seconds, and this project's sensor does not resume within its resume
#: hold (RESUME_HOLD, 20 s) of deferring, a deliberate delay for callbacks that come that early
#: (see README, "No resume in the first 20 seconds"); the figures are those of callbacks that come
#: later, as a callback step's usually does.
SETTLE = 25.0


#: Rounds of Airflow alone and this project's sensor, alternating: the figures of one stack
#: vary by several seconds from round to round (the first rounds on a fresh stack are slower),
#: more than the provider adds, so each is measured twice, in turn, after a warm-up round.
ROUNDS = 2
#: Runs of the warm-up round (``DateTimeSensorAsync``, not reported).
WARM_UP_RUNS = 10


def set_triggerers(stack: AirflowStack, k: int) -> None:
    """Run ``k`` triggerer processes (``triggerer``, ``triggerer-1`` ...), stopping or starting the extra ones."""
    for index in range(1, 16):
        name = f"triggerer-{index}"
        if index < k and name not in stack.processes:
            stack.start_component("triggerer", name=name)
        elif index >= k and name in stack.processes:
            stack.kill(name, signal.SIGTERM)  # a clean stop: its triggers go to the others
    # A new triggerer takes triggers once it has heartbeated; one stopped gives its own back.
    time.sleep(TRIGGERER_SETTLE)


#: Seconds for triggerers started or stopped to join or leave before a round.
TRIGGERER_SETTLE = 20.0
#: Triggerer counts of the scale-out rounds, in the order they run (twice).
TRIGGERER_COUNTS = (1, 2, 4)


def run_e2e(
    log_dir: Path,
    runs: int,
    time_limit: float,
    settle: float = SETTLE,
    rounds: int = ROUNDS,
    triggerers: tuple[int, ...] = TRIGGERER_COUNTS,
    only_triggerers: bool = False,
) -> dict[str, Any]:
    """
    The whole end-to-end section; returns its figures. Then, on the same stack, this project's
    sensor with 1, 2 and 4 triggerer processes (``triggerers``), in turn, ``rounds`` times
    (``only_triggerers``: those alone).
    """
    with emulator_process(log_dir, "e2e") as running, postgres(15434) as database:
        emulator = running.emulator
        ours = [prepare_callbacks(emulator, f"bench-e2e-ours-{i + 1}", runs) for i in range(rounds)]
        scaled = {
            (k, i): prepare_callbacks(emulator, f"bench-e2e-k{k}-{i + 1}", runs)
            for i in range(rounds)
            for k in triggerers
        }
        amazon = prepare_callbacks(emulator, "bench-e2e-amazon", runs)
        stack = AirflowStack(
            dags_folder=DAGS_FOLDER,
            extra_env=emulator.airflow_connection(),
            settings=SETTINGS,
            sql_alchemy_conn=database,
        )
        scenarios: dict[str, Any] = {}
        started = time.monotonic()
        with stack:
            for dag_id in ("bench_datetime_sensor", "bench_callback_sensor", "bench_sqs_sensor"):
                stack.wait_for_dag(dag_id)
            startup = time.monotonic() - started
            lead = max(90.0, runs * 2.0)
            run_datetime_dag(stack, WARM_UP_RUNS, time_limit, lead=60.0)
            # Airflow alone and this project's sensor in turn; the amazon sensors last (runs
            # still waiting at their limit would poll on beside the others).
            for i in range(0 if only_triggerers else rounds):
                suffix = f", round {i + 1}" if rounds > 1 else ""
                scenarios[f"DateTimeSensorAsync (Airflow alone){suffix}"] = run_datetime_dag(
                    stack, runs, time_limit, lead=lead
                )
                scenarios[f"SageMakerCallbackSensor{suffix}"] = run_callback_dag(
                    stack, emulator, "bench_callback_sensor", ours[i], time_limit, settle
                )
            # Several triggerers on the one queue: 1, 2 and 4 in turn, each count twice.
            for i in range(rounds):
                for k in triggerers:
                    set_triggerers(stack, k)
                    suffix = f", round {i + 1}" if rounds > 1 else ""
                    scenarios[f"SageMakerCallbackSensor, {k} triggerer{'s' if k > 1 else ''}{suffix}"] = (
                        run_callback_dag(
                            stack, emulator, "bench_callback_sensor", scaled[k, i], time_limit, settle
                        )
                    )
            set_triggerers(stack, 1)
            if not only_triggerers:
                scenarios["SqsSensor"] = run_callback_dag(
                    stack, emulator, "bench_sqs_sensor", amazon, time_limit, settle
                )
            (log_dir / "e2e.airflow.log").write_text(stack.logs())
    return {
        "runs": runs,
        "rounds": rounds,
        "warm_up_runs": WARM_UP_RUNS,
        "time_limit_s": time_limit,
        "settle_s": settle,
        "settings": SETTINGS,
        "triggerers": list(triggerers),
        "database": "PostgreSQL (scripts/postgres.sh)",
        "stack_startup_s": startup,
        "scenarios": scenarios,
    }
