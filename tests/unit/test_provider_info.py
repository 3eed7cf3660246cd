from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.get_provider_info import get_provider_info


def test_provider_info_lists_modules_that_import() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-sm-callback"
    kinds = ("hooks", "sensors", "operators", "triggers")
    modules = [m for kind in kinds for entry in info.get(kind, []) for m in entry["python-modules"]]
    assert "airflow_sm_callback.hooks.callback" in modules
    for module in modules:
        if module == "airflow_sm_callback.operators.approval" and not _airflow.AIRFLOW_V_3_1_PLUS:
            # Airflow 3.0 has no human-in-the-loop tasks: importing it says so.
            with pytest.raises(ImportError, match=r"needs Airflow 3\.1 or newer"):
                importlib.import_module(module)
            continue
        importlib.import_module(module)
    for decorator in info.get("task-decorators", []):
        module, _, name = decorator["class-name"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))


def test_airflow_providers_list_shows_the_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert '"package_name": "airflow-sm-callback"' in result.stdout.replace("'", '"')
