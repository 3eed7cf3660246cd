"""
``make reliability``: every reliability scenario at full size, with the table they produce.

Runs against the local emulator and real Airflow processes. With the LocalExecutor (default):
one stack on SQLite with one triggerer (triggerer killed, worker dies, AWS errors, duplicates),
then one on PostgreSQL (Debian's package, ``scripts/postgres.sh``) with two triggerers sharing
the load, and the 200-run load. With ``--executor celery``: PostgreSQL, a Redis broker
(``scripts/redis.sh``) and two Celery workers: triggerer killed, a worker killed mid-hand-off,
two triggerers, the 200-run load. ``--only hold`` runs the 200-run load alone, with
``--resume-hold``. Each row names the Airflow version and executor it ran on; a run with
``--only`` replaces its own rows and keeps the others. Writes ``docs/reliability.md`` and
``tests/reliability/results/latest.json`` and exits non-zero if any callback was lost or closed
twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.reliability import scenarios
from tests.reliability.scenarios import Outcome
from tests.system.stack import ROOT, AirflowStack, postgres, redis

RESULTS = ROOT / "tests" / "reliability" / "results"
DOC = ROOT / "docs" / "reliability.md"


@contextmanager
def stack_on(
    emulator: CallbackEmulator,
    *,
    database: str | None = None,
    triggerers: int = 1,
    broker_url: str | None = None,
    resume_hold: float | None = None,
) -> Iterator[AirflowStack]:
    dags = Path(tempfile.mkdtemp(prefix="reliability-dags-"))
    for source in sorted((ROOT / "tests" / "dags").glob("*.py")):
        (dags / source.name).symlink_to(source)
    settings = {
        "core__max_active_runs_per_dag": "256",
        "core__parallelism": "64",
        "scheduler__max_tis_per_query": "256",
        "triggerer__capacity": "1000",
        # A killed worker's tasks are found (their heartbeats stopped) in a minute, not five.
        "scheduler__task_instance_heartbeat_timeout": "60",
        # A task that a killed Celery worker had taken but not started stays queued (its broker
        # message is not redelivered for hours): requeued in two minutes, not ten.
        "scheduler__task_queued_timeout": "120",
        "scheduler__task_queued_timeout_check_interval": "15",
    }
    if resume_hold is not None:
        settings["sagemaker_callback__resume_hold"] = str(resume_hold)
    stack = AirflowStack(
        dags_folder=dags,
        extra_env={**emulator.aws_env(), **emulator.airflow_connection()},
        settings=settings,
        sql_alchemy_conn=database,
        executor="CeleryExecutor" if broker_url else "LocalExecutor",
        broker_url=broker_url,
    )
    stack.start()
    for index in range(1, triggerers):
        stack.start_component("triggerer", name=f"triggerer-{index + 1}")
    try:
        yield stack
    finally:
        stack.stop()


#: Scenario groups ``--only`` selects: with the LocalExecutor those on SQLite with one triggerer
#: and those on PostgreSQL; with the CeleryExecutor, "celery" (all of its); either, "hold" (the
#: 200-run load alone).
GROUPS = ("triggerer", "worker", "aws", "duplicates", "restarted", "postgres", "four", "celery", "hold")
LOCAL_GROUPS = {"triggerer", "worker", "aws", "duplicates", "restarted"}


#: Airflow 3.0 fails a task whose process died, whatever its retries (apache/airflow#55753, fixed
#: in 3.1): the scenarios that kill a worker under a running sensor do not apply there (README,
#: "Compatibility").
RETRIES_A_DEAD_TASK = _airflow.AIRFLOW_V_3_1_PLUS


def airflow_version() -> str:
    from airflow import __version__

    return __version__


def run(quick: bool, only: set[str], executor: str, resume_hold: float | None) -> list[Outcome]:
    size = 4 if quick else 20
    outcomes: list[Outcome] = []
    from airflow_sm_callback.utils.settings import default_resume_hold

    hold = (
        f"{resume_hold:g} s"
        if resume_hold is not None
        else f"default ({default_resume_hold(executor={'local': 'LocalExecutor', 'celery': 'CeleryExecutor'}[executor]):g} s)"
    )

    def record(make: Callable[[], Outcome]) -> None:
        outcome = make()
        outcome.airflow, outcome.executor, outcome.resume_hold = airflow_version(), executor, hold
        outcomes.append(outcome)
        print(json.dumps(outcome.as_dict()), flush=True)

    with CallbackEmulator() as emulator:
        os.environ.update(emulator.aws_env())
        if executor == "celery":
            with (
                postgres() as url,
                redis() as broker,
                stack_on(
                    emulator, database=url, triggerers=2, broker_url=broker, resume_hold=resume_hold
                ) as stack,
            ):
                if "celery" in only:
                    record(lambda: scenarios.triggerer_killed(emulator, stack, size))
                    if RETRIES_A_DEAD_TASK:
                        record(lambda: scenarios.worker_killed(emulator, stack, max(2, size // 2)))
                    record(
                        lambda: scenarios.load(
                            emulator, stack, 10 if quick else 50, name="two triggerers (PostgreSQL)"
                        )
                    )
                if only & {"celery", "hold"}:
                    record(
                        lambda: scenarios.load(
                            emulator,
                            stack,
                            20 if quick else 200,
                            name=f"load, {20 if quick else 200} runs",
                        )
                    )
            return outcomes
        if "hold" in only:
            with (
                postgres() as url,
                stack_on(emulator, database=url, triggerers=2, resume_hold=resume_hold) as stack,
            ):
                record(
                    lambda: scenarios.load(
                        emulator, stack, 20 if quick else 200, name=f"load, {20 if quick else 200} runs"
                    )
                )
            return outcomes
        if only & LOCAL_GROUPS:
            with stack_on(emulator, resume_hold=resume_hold) as stack:
                if "triggerer" in only:
                    record(lambda: scenarios.triggerer_killed(emulator, stack, size))
                    record(lambda: scenarios.triggerer_killed(emulator, stack, size, mid_flight=True))
                if "worker" in only and RETRIES_A_DEAD_TASK:
                    record(lambda: scenarios.worker_dies(emulator, stack, max(2, size // 4)))
                if "aws" in only:
                    record(lambda: scenarios.aws_errors(emulator, stack, size, seconds=15 if quick else 60))
                if "duplicates" in only:
                    record(lambda: scenarios.duplicates(emulator, stack, size))
                if "restarted" in only:
                    record(lambda: scenarios.restarted(emulator, stack, size))
        if "four" in only:
            with (
                postgres() as url,
                stack_on(emulator, database=url, triggerers=4, resume_hold=resume_hold) as stack,
            ):
                record(
                    lambda: scenarios.triggerer_killed(
                        emulator,
                        stack,
                        20 if quick else 100,
                        mid_flight=True,
                        triggerer="triggerer-2",
                        name="four triggerers, one killed and restarted (PostgreSQL)",
                        # 100 runs at once: the reliability DAG's (no cap of 64 active runs, a
                        # wait long enough for all of them to defer on 2 CPUs).
                        dag_id="rel_deferrable",
                    )
                )
        if "postgres" not in only:
            return outcomes
        with (
            postgres() as url,
            stack_on(emulator, database=url, triggerers=2, resume_hold=resume_hold) as stack,
        ):
            record(
                lambda: scenarios.load(
                    emulator, stack, 10 if quick else 50, name="two triggerers (PostgreSQL)"
                )
            )
            record(
                lambda: scenarios.restarted(
                    emulator,
                    stack,
                    10 if quick else 50,
                    name="resumed task restarted, two triggerers (PostgreSQL)",
                )
            )
            record(
                lambda: scenarios.load(
                    emulator, stack, 20 if quick else 200, name=f"load, {20 if quick else 200} runs"
                )
            )
    return outcomes


def write(outcomes: list[Outcome], started: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    (RESULTS / "latest.json").write_text(
        json.dumps({"machine": machine, "outcomes": [o.as_dict() for o in outcomes]}, indent=2) + "\n"
    )
    rows = [
        "| scenario | Airflow | executor | resume hold | injected | callbacks | delivered | lost | closed twice "
        "| recovery (s) | stale messages left, deleted by the next receive "
        "| tasks that failed to start (restarted by Airflow) | hand-offs taken again | sensors retried "
        "| resumes failed by the scheduler's race | notes |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        notes = "; ".join(o.notes) or ""
        rows.append(
            f"| {o.scenario} | {o.airflow} | {o.executor} | {o.resume_hold} | {o.injected} | {o.callbacks} "
            f"| {o.delivered} | {o.lost} | {o.closed_twice} "
            f"| {o.recovery_seconds if o.recovery_seconds is not None else ''} | {o.stale_swept} "
            f"| {o.startup_failures} | {o.taken_again} | {o.retried} | {'' if o.resume_races is None else o.resume_races} | {notes} |"
        )
    table = "\n".join(rows)
    text = DOC.read_text() if DOC.exists() else ""
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    generated = (
        f"{begin}\n_Generated by `make reliability` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, "
        f"in {(time.monotonic() - started) / 60:.0f} minutes._\n\n{table}\n{end}"
    )
    if begin in text and end in text:
        text = text[: text.index(begin)] + generated + text[text.index(end) + len(end) :]
    else:
        text = f"{text.rstrip()}\n\n{generated}\n" if text else f"# Reliability\n\n{generated}\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, short faults")
    parser.add_argument("--executor", choices=["local", "celery"], default="local", help="the executor")
    parser.add_argument(
        "--resume-hold", type=float, help="[sagemaker_callback] resume_hold for the sensors (default: theirs)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=GROUPS,
        help="run these scenarios again and replace their rows in the last results",
    )
    args = parser.parse_args()
    if args.executor == "local" and not _airflow.AIRFLOW_V_3_1_PLUS:
        parser.error(
            "Airflow 3.0's LocalExecutor fails tasks it starts together, whatever they run: it gives "
            "a task to a worker before their queued state is committed (apache/airflow#56010, fixed "
            "in 3.1.0); run the scenarios on 3.0 with --executor celery"
        )
    started = time.monotonic()
    default = {"local": set(GROUPS) - {"celery", "hold"}, "celery": {"celery"}}[args.executor]
    outcomes = run(args.quick, set(args.only or default), args.executor, args.resume_hold)
    if (RESULTS / "latest.json").exists() and (args.only or args.executor != "local"):

        def key(row: dict[str, object]) -> tuple[object, ...]:
            return (
                row["scenario"],
                row.get("airflow", ""),
                row.get("executor", ""),
                row.get("resume_hold", ""),
            )

        fresh = {key(o.as_dict()) for o in outcomes}
        rows = json.loads((RESULTS / "latest.json").read_text())["outcomes"]
        kept = [Outcome(**row) for row in rows if key(row) not in fresh]
        outcomes = kept + outcomes
    write(outcomes, started)
    bad = [o for o in outcomes if o.lost or o.closed_twice or o.delivered != o.callbacks]
    print(f"\n{len(outcomes)} scenarios, {len(bad)} with a lost or twice-closed callback; see {DOC}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
