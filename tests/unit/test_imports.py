"""What importing the sensor costs a DAG file and a resumed task."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("boto3", "botocore.session", "aiobotocore", "airflow.providers.amazon.aws.hooks.base_aws")


def modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_dag_facing_modules_import_no_aws_sdk() -> None:
    # A DAG file's parse, and a resumed sensor that makes no AWS request, skip about a second
    # of imports: the hook comes in when first used, the trigger when the sensor defers.
    loaded = modules_after(
        "import airflow_sm_callback.sensors.callback, airflow_sm_callback.operators.callback, "
        "airflow_sm_callback.decorators.callback"
    )
    assert {"airflow_sm_callback.sensors.callback", "airflow_sm_callback.operators.callback"} <= loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_hook_still_brings_them_when_used() -> None:
    # The check above is meaningful: the same probe sees the SDK once the hook is imported.
    loaded = modules_after("from airflow_sm_callback.hooks.callback import SageMakerCallbackHook")
    assert {"boto3", "botocore.session", "airflow.providers.amazon.aws.hooks.base_aws"} <= loaded
