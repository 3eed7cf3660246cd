"""
The emulator as a separate process (``python -m airflow_sm_callback.testing``), its environment
helpers and its pytest plugin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_sm_callback.testing import CallbackEmulator, EmulatorError

# ``sagemaker_callback_emulator`` and ``callback_queue`` come from
# ``airflow_sm_callback.testing.pytest_plugin``, which tests/conftest.py registers.
pytestmark = [pytest.mark.integration, pytest.mark.emulator]

DEFINITION = {
    "Version": "2020-12-01",
    "Parameters": [{"Name": "Queue", "Type": "String"}],
    "Steps": [
        {
            "Name": "Wait",
            "Type": "Callback",
            "Arguments": {"x": 1},
            "SqsQueueUrl": {"Get": "Parameters.Queue"},
            "OutputParameters": [{"OutputName": "n", "OutputType": "Integer"}],
        }
    ],
}


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_sm_callback.testing", "--port", "0", "--region", "eu-west-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("endpoint_url=http://127.0.0.1:"), (
            line,
            process.stderr and process.stderr.read(),
        )
        yield process, line.split("=", 1)[1]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_module_runs_in_the_foreground_and_connect_works(
    emulator_process: tuple[subprocess.Popen[str], str], stop_signal: signal.Signals
) -> None:
    process, endpoint_url = emulator_process
    remote = CallbackEmulator.connect(endpoint_url)
    assert remote.region == "eu-west-1"
    assert remote.account_id == "123456789012"
    assert remote.endpoint_url == endpoint_url
    assert not remote.is_local

    queue_url = remote.create_queue(f"q-{uuid.uuid4().hex[:8]}")
    name = f"p-{uuid.uuid4().hex[:8]}"
    remote.create_pipeline(name, DEFINITION)
    arn = remote.start_execution(name, {"Queue": queue_url})
    assert ":eu-west-1:" in arn
    (message,) = remote.queue_messages(queue_url)
    body = json.loads(message["Body"])
    assert body["arguments"] == {"x": 1}

    remote.configure(strict_output_types=False)
    assert remote.settings()["strict_output_types"] is False
    remote.inject_fault("sagemaker", "SendPipelineExecutionStepSuccess", count=1)
    sm = remote.client("sagemaker")  # botocore retries the throttled call
    sm.send_pipeline_execution_step_success(
        CallbackToken=body["token"], OutputParameters=[{"Name": "n", "Value": "x"}]
    )
    assert remote.wait_for_execution(arn, timeout=5) == "Succeeded"
    assert remote.request_counts("sagemaker") == {"SendPipelineExecutionStepSuccess": 2}
    assert [r["status"] for r in remote.requests("sagemaker")] == [400, 200]
    assert remote.step(arn, "Wait")["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "n", "Value": "x"}
    ]

    remote.stop()  # a connected handle does not stop the other process
    assert process.poll() is None
    process.send_signal(stop_signal)
    assert process.wait(timeout=10) == 0
    with pytest.raises(EmulatorError):
        CallbackEmulator.connect(endpoint_url)


def test_aws_env_points_a_subprocess_at_the_emulator(
    sagemaker_callback_emulator: CallbackEmulator, callback_queue: str
) -> None:
    emulator = sagemaker_callback_emulator
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emulator.aws_env())
    assert set(emulator.aws_env()) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
    }
    script = textwrap.dedent(
        f"""
        import boto3
        sqs = boto3.client("sqs")
        sqs.send_message(QueueUrl={callback_queue!r}, MessageBody="from a subprocess")
        """
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert [m["Body"] for m in emulator.queue_messages(callback_queue)] == ["from a subprocess"]


def test_airflow_connection(sagemaker_callback_emulator: CallbackEmulator) -> None:
    emulator = sagemaker_callback_emulator
    (key, value), *_ = emulator.airflow_connection().items()
    assert key == "AIRFLOW_CONN_AWS_DEFAULT"
    connection = json.loads(value)
    assert connection["conn_type"] == "aws"
    assert connection["login"]
    assert connection["password"]
    assert connection["extra"] == {"endpoint_url": emulator.endpoint_url, "region_name": emulator.region}
    assert list(emulator.airflow_connection("my_aws")) == ["AIRFLOW_CONN_MY_AWS"]


def test_plugin_fixtures(sagemaker_callback_emulator: CallbackEmulator, callback_queue: str) -> None:
    assert sagemaker_callback_emulator.is_local
    assert callback_queue.startswith(sagemaker_callback_emulator.endpoint_url)
    assert sagemaker_callback_emulator.queue_messages(callback_queue) == []
    sqs: Any = sagemaker_callback_emulator.client("sqs")
    assert sqs.get_queue_attributes(QueueUrl=callback_queue)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_importing_the_package_imports_neither_airflow_nor_moto() -> None:
    script = (
        "import sys, airflow_sm_callback.testing as t; "
        "assert t.CallbackEmulator; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'moto', 'flask')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_starting_an_emulator_imports_no_airflow() -> None:
    script = (
        "import sys\n"
        "from airflow_sm_callback.testing import CallbackEmulator\n"
        "with CallbackEmulator() as e:\n"
        "    e.create_queue('q')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'airflow']\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_two_emulators_in_one_process(sagemaker_callback_emulator: CallbackEmulator) -> None:
    with CallbackEmulator() as other:
        assert other.endpoint_url != sagemaker_callback_emulator.endpoint_url
        other.inject_fault("sqs")
        assert sagemaker_callback_emulator.faults() == []
    with pytest.raises(EmulatorError):
        _ = other.endpoint_url
