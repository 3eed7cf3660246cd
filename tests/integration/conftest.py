"""Integration fixtures: which shared path the trigger tests drive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing.triggerer import SharedStreamHarness


@pytest.fixture(params=["airflow", "local"])
def harness_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    Run a test on Airflow's shared streams (3.3+) and on the provider's own shared poll (the
    path below 3.3), each in its turn; below 3.3 only the latter exists.
    """
    mode = request.param
    if mode == "airflow" and not _airflow.AIRFLOW_V_3_3_PLUS:
        pytest.skip("Airflow below 3.3 has no shared streams")
    previous = SharedStreamHarness.default_local
    SharedStreamHarness.default_local = mode == "local"
    try:
        yield mode
    finally:
        SharedStreamHarness.default_local = previous
