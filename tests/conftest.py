"""
Test session setup: a throwaway AIRFLOW_HOME (never ~/airflow), dummy AWS credentials (nothing
reaches a real account) and the callback emulator's fixtures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_HOME = tempfile.mkdtemp(prefix="airflow-sm-callback-home-")

# Set before anything imports Airflow.
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

pytest_plugins = ["airflow_sm_callback.testing.pytest_plugin", "tests.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The CeleryExecutor's tests last: their stack stops the LocalExecutor one when it starts."""
    items.sort(key=lambda item: item.get_closest_marker("celery") is not None)
