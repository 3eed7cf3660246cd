"""Integration fixtures: which shared path the trigger tests drive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing.triggerer import SharedStreamHarness


@pytest.fixture(params=["airflow", "local"])
def harness_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    Run a test on the shared path of the installed Airflow: its shared streams from 3.3, the
    provider's own shared poll below (``make test`` runs both ends, so both paths).
    """
    mode = request.param
    if mode == "airflow" and not _airflow.AIRFLOW_V_3_3_PLUS:
        pytest.skip("Airflow below 3.3 has no shared streams")
    if mode == "local" and _airflow.AIRFLOW_V_3_3_PLUS:
        # The provider's own poll runs below 3.3 only: make test covers it on the floor and 3.2.1.
        pytest.skip("from Airflow 3.3 a triggerer shares polls itself")
    previous = SharedStreamHarness.default_local
    SharedStreamHarness.default_local = mode == "local"
    try:
        yield mode
    finally:
        SharedStreamHarness.default_local = previous
