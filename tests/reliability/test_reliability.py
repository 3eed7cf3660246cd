"""The fast subset of the reliability scenarios (``make reliability`` runs them all, larger)."""

from __future__ import annotations

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.reliability import scenarios
from tests.reliability.scenarios import Outcome
from tests.system.stack import AirflowStack

pytestmark = [pytest.mark.system, pytest.mark.xdist_group("stack")]


def assert_nothing_lost(outcome: Outcome) -> None:
    assert outcome.delivered == outcome.callbacks, outcome.notes
    assert outcome.lost == 0, outcome.notes
    assert outcome.closed_twice == 0, outcome.notes
    assert not outcome.notes, outcome.notes


@pytest.mark.parametrize("mid_flight", [False, True], ids=["while-waiting", "mid-flight"])
def test_triggerer_killed_and_restarted(
    emulator: CallbackEmulator, stack: AirflowStack, mid_flight: bool
) -> None:
    assert_nothing_lost(scenarios.triggerer_killed(emulator, stack, 4, mid_flight=mid_flight))


#: Airflow 3.0 fails a task whose process died, whatever its retries (apache/airflow#55753,
#: fixed by #55767 in 3.1): the sensor gets no second try to take its callback.
RETRIES_A_DEAD_TASK = pytest.mark.skipif(
    not _airflow.AIRFLOW_V_3_1_PLUS, reason="Airflow 3.0 does not retry a task whose process died (#55753)"
)


@RETRIES_A_DEAD_TASK
def test_worker_dies_before_the_hand_off(emulator: CallbackEmulator, stack: AirflowStack) -> None:
    assert_nothing_lost(scenarios.worker_dies(emulator, stack, 2))


def test_aws_errors(emulator: CallbackEmulator, stack: AirflowStack) -> None:
    outcome = scenarios.aws_errors(emulator, stack, 4, seconds=15)
    assert_nothing_lost(outcome)
    assert sum(r["status"] >= 400 for r in emulator.requests()) > 0  # faults were really served


def test_duplicates(emulator: CallbackEmulator, stack: AirflowStack) -> None:
    assert_nothing_lost(scenarios.duplicates(emulator, stack, 4))


def test_a_resumed_task_restarted_without_its_event(emulator: CallbackEmulator, stack: AirflowStack) -> None:
    before = stack.logs().count("taken again: it was handed to this task before it restarted")
    assert_nothing_lost(scenarios.restarted(emulator, stack, 4))
    # One triggerer: each restarted task's new trigger took its hand-off from it at once.
    after = stack.logs().count("taken again: it was handed to this task before it restarted")
    assert after - before == 4


@pytest.mark.celery
@RETRIES_A_DEAD_TASK
# Up to two resume holds, the heartbeat timeout and, for a task the worker had taken but not
# started when it was killed, the queued timeout (two minutes).
@pytest.mark.timeout(600)
def test_a_celery_worker_killed_mid_hand_off(emulator: CallbackEmulator, celery_stack: AirflowStack) -> None:
    # CeleryExecutor, as on Amazon MWAA: the worker running resumed sensors is killed; Airflow
    # finds their stopped heartbeats and retries them, and each still gets its own callback.
    assert_nothing_lost(scenarios.worker_killed(emulator, celery_stack, 4))
