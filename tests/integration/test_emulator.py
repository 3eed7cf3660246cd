"""
The callback emulator's SageMaker side, driven with boto3 over HTTP (no mocks, no Airflow).

One emulator per module; every test uses its own queue and pipeline names and the settings are
reset after each test.
"""

from __future__ import annotations

import json
import pathlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from airflow_sm_callback.testing import CallbackEmulator, EmulatorError

pytestmark = [pytest.mark.integration, pytest.mark.emulator]

# Produced by the SageMaker Python SDK 2.257 (``Pipeline(...).definition()``): two callback
# steps, a condition on a callback output and a fail step.
SDK_DEFINITION_TEXT = (
    pathlib.Path(__file__).parents[1] / "data" / "pipelines" / "sdk-callback-with-condition.json"
).read_text()
SDK_DEFINITION: dict[str, Any] = json.loads(SDK_DEFINITION_TEXT)
TOKEN_RE = re.compile(r"^[a-zA-Z0-9]{10}$")
GOOD_OUTPUTS = [
    {"Name": "rows_scored", "Value": "1200"},
    {"Name": "auc", "Value": "0.91"},
    {"Name": "passed", "Value": "true"},
    {"Name": "report_uri", "Value": "s3://bucket/report.html"},
]


def _callback_definition(queue_url: str, *, outputs: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Two chained callback steps: ``First`` then ``Second`` (which depends on it)."""
    return {
        "Version": "2020-12-01",
        "Parameters": [{"Name": "Queue", "Type": "String", "DefaultValue": queue_url}],
        "Steps": [
            {
                "Name": "First",
                "Type": "Callback",
                "Arguments": {"n": 5, "f": 0.25, "s": "text", "b": True},
                "SqsQueueUrl": {"Get": "Parameters.Queue"},
                "OutputParameters": outputs
                if outputs is not None
                else [
                    {"OutputName": "count", "OutputType": "Integer"},
                    {"OutputName": "score", "OutputType": "Float"},
                    {"OutputName": "ok", "OutputType": "Boolean"},
                    {"OutputName": "note", "OutputType": "String"},
                ],
            },
            {
                "Name": "Second",
                "Type": "Callback",
                "DependsOn": ["First"],
                "Arguments": {},
                "SqsQueueUrl": {"Get": "Parameters.Queue"},
                "OutputParameters": [],
            },
        ],
    }


@pytest.fixture(scope="module")
def emulator() -> Iterator[CallbackEmulator]:
    with CallbackEmulator() as started:
        yield started


@pytest.fixture(autouse=True)
def _reset_emulator(emulator: CallbackEmulator) -> Iterator[None]:
    yield
    emulator.reset()


@pytest.fixture(scope="module")
def sm(emulator: CallbackEmulator) -> Any:
    return emulator.client("sagemaker", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


@pytest.fixture(scope="module")
def sm_unchecked(emulator: CallbackEmulator) -> Any:
    """A client that sends what botocore would refuse (too short, too small), like a raw caller."""
    return emulator.client(
        "sagemaker",
        config=Config(parameter_validation=False, retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def sqs(emulator: CallbackEmulator) -> Any:
    return emulator.client("sqs")


@pytest.fixture
def queue_url(emulator: CallbackEmulator) -> str:
    return emulator.create_queue(f"q-{uuid.uuid4().hex[:12]}")


def _name() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def _receive(sqs: Any, queue_url: str) -> dict[str, Any]:
    """Receive exactly one message, delete it and return its parsed body."""
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    assert len(messages) == 1, messages
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
    body: dict[str, Any] = json.loads(messages[0]["Body"])
    return body


def _error(exc_info: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    response = exc_info.value.response
    return (
        response["Error"]["Code"],
        response["Error"]["Message"],
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def _start(emulator: CallbackEmulator, definition: dict[str, Any], **parameters: object) -> str:
    name = _name()
    emulator.create_pipeline(name, definition)
    return emulator.start_execution(name, parameters or None)


def _steps(emulator: CallbackEmulator, arn: str) -> dict[str, dict[str, Any]]:
    return {step["StepName"]: step for step in emulator.list_steps(arn)}


# ---------------------------------------------------------------------- round trips


def test_round_trip_one_callback_step(emulator: CallbackEmulator, sm: Any, sqs: Any) -> None:
    queue_name = f"q-{uuid.uuid4().hex[:12]}"
    emulator.create_queue(queue_name)
    # The definition names the queue by its real AWS URL: the emulator resolves it by account+name.
    aws_url = f"https://sqs.us-east-1.amazonaws.com/{emulator.account_id}/{queue_name}"
    local_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    definition = {
        "Version": "2020-12-01",
        "Parameters": [{"Name": "Flag", "Type": "Boolean", "DefaultValue": False}],
        "Steps": [
            {
                "Name": "Score",
                "Type": "Callback",
                "Arguments": {
                    "number": 5,
                    "ratio": 0.5,
                    "flag": {"Get": "Parameters.Flag"},
                    "execution_id": {"Get": "Execution.PipelineExecutionId"},
                    "pipeline": {"Get": "Execution.PipelineName"},
                    "display": {"Get": "Execution.PipelineExecutionDisplayName"},
                    "joined": {
                        "Std:Join": {
                            "On": "/",
                            "Values": ["s3:/", "bucket", {"Get": "Execution.PipelineName"}],
                        }
                    },
                },
                "SqsQueueUrl": aws_url,
                "OutputParameters": [{"OutputName": "rows", "OutputType": "Integer"}],
            }
        ],
    }
    name = _name()
    pipeline_arn = sm.create_pipeline(
        PipelineName=name,
        PipelineDefinition=json.dumps(definition),
        RoleArn="arn:aws:iam::123456789012:role/r",
    )["PipelineArn"]
    # What SageMakerStartPipelineOperator sends.
    arn = sm.start_pipeline_execution(
        PipelineName=name,
        PipelineExecutionDisplayName="run-1",
        PipelineParameters=[{"Name": "Flag", "Value": "true"}],
    )["PipelineExecutionArn"]
    assert arn.startswith(f"{pipeline_arn}/execution/")
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["PipelineExecutionStatus"] == "Executing"
    assert described["PipelineArn"] == pipeline_arn
    assert described["PipelineExecutionDisplayName"] == "run-1"
    assert "CreationTime" in described
    assert "LastModifiedTime" in described

    # Peeking changes nothing; the message is a real SQS message with its attributes.
    peeked = emulator.queue_messages(local_url)
    assert len(peeked) == 1
    assert peeked[0]["Attributes"]["ApproximateReceiveCount"] == "0"
    assert not peeked[0]["InFlight"]
    messages = sqs.receive_message(QueueUrl=local_url, AttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert len(messages) == 1
    assert int(messages[0]["Attributes"]["SentTimestamp"]) > 0
    assert messages[0]["Attributes"]["ApproximateReceiveCount"] == "1"
    assert "MessageAttributes" not in messages[0]
    assert emulator.queue_messages(local_url)[0]["InFlight"] is True
    body = json.loads(messages[0]["Body"])
    assert set(body) == {"token", "pipelineExecutionArn", "arguments", "status"}
    assert TOKEN_RE.match(body["token"])
    assert body["pipelineExecutionArn"] == arn
    assert body["status"] == "Executing"
    execution_id = arn.rsplit("/", 1)[1]
    assert body["arguments"] == {
        "number": 5,
        "ratio": 0.5,
        "flag": True,
        "execution_id": execution_id,
        "pipeline": name,
        "display": "run-1",
        "joined": f"s3://bucket/{name}",
    }
    sqs.delete_message(QueueUrl=local_url, ReceiptHandle=messages[0]["ReceiptHandle"])

    step = _steps(emulator, arn)["Score"]
    assert step["StepStatus"] == "Executing"
    assert step["Metadata"]["Callback"] == {
        "CallbackToken": body["token"],
        "SqsQueueUrl": aws_url,
        "OutputParameters": [],
    }

    response = sm.send_pipeline_execution_step_success(
        CallbackToken=body["token"], OutputParameters=[{"Name": "rows", "Value": "42"}]
    )
    assert response["PipelineExecutionArn"] == arn
    assert emulator.wait_for_execution(arn, timeout=5) == "Succeeded"
    steps = sm.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    assert len(steps) == 1
    assert steps[0]["StepStatus"] == "Succeeded"
    assert steps[0]["EndTime"] >= steps[0]["StartTime"]
    assert steps[0]["Metadata"]["Callback"]["OutputParameters"] == [{"Name": "rows", "Value": "42"}]
    definition_back = sm.describe_pipeline_definition_for_execution(PipelineExecutionArn=arn)
    assert json.loads(definition_back["PipelineDefinition"]) == definition
    assert emulator.queue_messages(local_url) == []
    executions = sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]
    assert [(e["PipelineExecutionArn"], e["PipelineExecutionStatus"]) for e in executions] == [
        (arn, "Succeeded")
    ]


def test_sdk_definition_condition_true_runs_human_approval(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    name = _name()
    emulator.create_pipeline(name, SDK_DEFINITION_TEXT)
    arn = sm.start_pipeline_execution(
        PipelineName=name,
        PipelineParameters=[
            {"Name": "CallbackQueueUrl", "Value": queue_url},
            {"Name": "Threshold", "Value": "0.85"},
            {"Name": "BatchSize", "Value": "250"},
        ],
    )["PipelineExecutionArn"]
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["PipelineExperimentConfig"] == {
        "ExperimentName": name,
        "TrialName": arn.rsplit("/", 1)[1],
    }
    parameters = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in parameters} == {
        "CallbackQueueUrl": queue_url,
        "InputUri": "s3://example-bucket/scoring/input.csv",
        "Threshold": "0.85",
        "BatchSize": "250",
    }
    assert described["PipelineExecutionDisplayName"].startswith("execution-")

    score = _receive(sqs, queue_url)
    assert score["arguments"] == {
        "input_uri": "s3://example-bucket/scoring/input.csv",
        "threshold": 0.85,
        "batch_size": 250,
        "step_name": "score",
    }
    sm.send_pipeline_execution_step_success(CallbackToken=score["token"], OutputParameters=GOOD_OUTPUTS)

    approval = _receive(sqs, queue_url)
    assert approval["arguments"] == {"auc": 0.91, "step_name": "approve"}
    assert approval["token"] != score["token"]
    assert approval["pipelineExecutionArn"] == arn
    steps = _steps(emulator, arn)
    assert set(steps) == {"ScoreInWarehouse", "CheckAuc", "HumanApproval"}
    assert steps["CheckAuc"]["Metadata"] == {"Condition": {"Outcome": "True"}}
    assert steps["HumanApproval"]["StepStatus"] == "Executing"
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Executing"

    sm.send_pipeline_execution_step_success(
        CallbackToken=approval["token"], OutputParameters=[{"Name": "approved_by", "Value": "alice"}]
    )
    assert emulator.wait_for_execution(arn, timeout=5) == "Succeeded"
    steps = _steps(emulator, arn)
    assert steps["HumanApproval"]["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "approved_by", "Value": "alice"}
    ]
    assert "AucTooLow" not in steps


def test_sdk_definition_condition_false_fails(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    arn = _start(emulator, SDK_DEFINITION, CallbackQueueUrl=queue_url)
    score = _receive(sqs, queue_url)
    assert score["arguments"]["threshold"] == 0.8
    assert score["arguments"]["batch_size"] == 500
    outputs = [dict(o) for o in GOOD_OUTPUTS]
    outputs[1]["Value"] = "0.79"
    sm.send_pipeline_execution_step_success(CallbackToken=score["token"], OutputParameters=outputs)

    assert emulator.wait_for_execution(arn, timeout=5) == "Failed"
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["FailureReason"] == "AUC below threshold"
    steps = _steps(emulator, arn)
    assert set(steps) == {"ScoreInWarehouse", "CheckAuc", "AucTooLow"}
    assert steps["CheckAuc"]["Metadata"] == {"Condition": {"Outcome": "False"}}
    assert steps["AucTooLow"]["StepStatus"] == "Failed"
    assert steps["AucTooLow"]["Metadata"] == {"Fail": {"ErrorMessage": "AUC below threshold"}}
    assert emulator.queue_messages(queue_url) == []


def test_close_with_failure_fails_execution_and_dependents_never_start(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    arn = _start(emulator, _callback_definition(queue_url))
    first = _receive(sqs, queue_url)
    sm.send_pipeline_execution_step_failure(CallbackToken=first["token"], FailureReason="warehouse is down")

    assert emulator.wait_for_execution(arn, timeout=5) == "Failed"
    reason = sm.describe_pipeline_execution(PipelineExecutionArn=arn)["FailureReason"]
    assert "First" in reason
    assert "warehouse is down" in reason
    steps = _steps(emulator, arn)
    assert set(steps) == {"First"}
    assert steps["First"]["StepStatus"] == "Failed"
    assert steps["First"]["FailureReason"] == "warehouse is down"
    assert emulator.queue_messages(queue_url) == []


def test_parallel_failure_waits_for_running_steps(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    definition = {
        "Version": "2020-12-01",
        "Steps": [
            {"Name": n, "Type": "Callback", "Arguments": {"step": n}, "SqsQueueUrl": queue_url}
            for n in ("Left", "Right")
        ],
    }
    arn = _start(emulator, definition)
    messages = emulator.queue_messages(queue_url)
    tokens = {b["arguments"]["step"]: b["token"] for b in (json.loads(m["Body"]) for m in messages)}
    assert set(tokens) == {"Left", "Right"}
    sm.send_pipeline_execution_step_failure(CallbackToken=tokens["Left"], FailureReason="left broke")
    # The other step is still running: the execution fails only once it is closed.
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Executing"
    sm.send_pipeline_execution_step_success(CallbackToken=tokens["Right"])
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "Left" in described["FailureReason"]


# ---------------------------------------------------------------------- stop


@pytest.mark.parametrize("close_with", ["success", "failure"])
def test_stop_while_callback_step_executes(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str, close_with: str
) -> None:
    arn = _start(emulator, _callback_definition(queue_url))
    first = _receive(sqs, queue_url)

    assert sm.stop_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionArn"] == arn
    stopping = _receive(sqs, queue_url)
    assert stopping["token"] == first["token"]
    assert stopping["status"] == "Stopping"
    assert stopping["pipelineExecutionArn"] == arn
    assert stopping["arguments"] == first["arguments"]
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Stopping"
    assert _steps(emulator, arn)["First"]["StepStatus"] == "Stopping"
    # A second stop while stopping changes nothing and sends nothing.
    sm.stop_pipeline_execution(PipelineExecutionArn=arn)
    assert emulator.queue_messages(queue_url) == []

    if close_with == "success":
        sm.send_pipeline_execution_step_success(
            CallbackToken=first["token"], OutputParameters=[{"Name": "count", "Value": "1"}]
        )
    else:
        sm.send_pipeline_execution_step_failure(CallbackToken=first["token"], FailureReason="stopped by user")
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["PipelineExecutionStatus"] == "Stopped"
    assert "FailureReason" not in described
    steps = _steps(emulator, arn)
    assert set(steps) == {"First"}  # the dependent never starts
    assert steps["First"]["StepStatus"] == ("Succeeded" if close_with == "success" else "Failed")
    assert emulator.queue_messages(queue_url) == []
    with pytest.raises(ClientError) as exc_info:
        sm.stop_pipeline_execution(PipelineExecutionArn=arn)
    assert _error(exc_info)[0] == "ConflictException"


def test_stop_before_any_callback_step(emulator: CallbackEmulator, sm: Any, queue_url: str) -> None:
    emulator.configure(step_delay_seconds=30)
    definition = {
        "Version": "2020-12-01",
        "Steps": [
            {"Name": "Prepare", "Type": "Processing", "Arguments": {}},
            {
                "Name": "Wait",
                "Type": "Callback",
                "DependsOn": ["Prepare"],
                "Arguments": {},
                "SqsQueueUrl": queue_url,
            },
        ],
    }
    arn = _start(emulator, definition)
    assert _steps(emulator, arn)["Prepare"]["StepStatus"] == "Executing"
    sm.stop_pipeline_execution(PipelineExecutionArn=arn)
    assert sm.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Stopped"
    steps = _steps(emulator, arn)
    assert set(steps) == {"Prepare"}
    assert steps["Prepare"]["StepStatus"] == "Stopped"
    assert emulator.queue_messages(queue_url) == []


def test_step_delay_runs_non_callback_steps_in_the_background(
    emulator: CallbackEmulator, sqs: Any, queue_url: str
) -> None:
    emulator.configure(step_delay_seconds=0.2)
    definition = {
        "Version": "2020-12-01",
        "Steps": [
            {"Name": "Prepare", "Type": "Processing", "Arguments": {}},
            {
                "Name": "Wait",
                "Type": "Callback",
                "DependsOn": ["Prepare"],
                "Arguments": {},
                "SqsQueueUrl": queue_url,
            },
        ],
    }
    arn = _start(emulator, definition)
    assert emulator.queue_messages(queue_url) == []
    body = _receive(sqs, queue_url)  # long poll: arrives once Prepare has taken its 0.2 s
    assert body["pipelineExecutionArn"] == arn
    assert _steps(emulator, arn)["Prepare"]["StepStatus"] == "Succeeded"


# ---------------------------------------------------------------------- expressions and conditions


def test_outputs_are_read_with_declared_types_and_imply_dependencies(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    definition = {
        "Version": "2020-12-01",
        "Steps": [
            {"Name": "Train", "Type": "Training", "Arguments": {}},
            {
                "Name": "Produce",
                "Type": "Callback",
                "Arguments": {"model": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}},
                "SqsQueueUrl": queue_url,
                "OutputParameters": [
                    {"OutputName": "n", "OutputType": "Integer"},
                    {"OutputName": "x", "OutputType": "Float"},
                    {"OutputName": "ok", "OutputType": "Boolean"},
                    {"OutputName": "s", "OutputType": "String"},
                ],
            },
            {
                # No DependsOn: reading Produce's outputs is enough to wait for it.
                "Name": "Consume",
                "Type": "Callback",
                "Arguments": {
                    "n": {"Get": "Steps.Produce.OutputParameters['n']"},
                    "x": {"Get": "Steps.Produce.OutputParameters['x']"},
                    "ok": {"Get": "Steps.Produce.OutputParameters['ok']"},
                    "s": {"Get": "Steps.Produce.OutputParameters['s']"},
                    "both": {
                        "Std:Join": {
                            "On": "-",
                            "Values": [{"Get": "Steps.Produce.OutputParameters['n']"}, "z"],
                        }
                    },
                },
                "SqsQueueUrl": queue_url,
            },
        ],
    }
    arn = _start(emulator, definition)
    produce = _receive(sqs, queue_url)
    assert produce["arguments"]["model"]  # a placeholder for a property SageMaker would fill in
    assert set(_steps(emulator, arn)) == {"Train", "Produce"}
    sm.send_pipeline_execution_step_success(
        CallbackToken=produce["token"],
        OutputParameters=[
            {"Name": "n", "Value": "-3"},
            {"Name": "x", "Value": "1e3"},
            {"Name": "ok", "Value": "FALSE"},
            {"Name": "s", "Value": "07"},
        ],
    )
    consume = _receive(sqs, queue_url)
    assert consume["arguments"] == {"n": -3, "x": 1000.0, "ok": False, "s": "07", "both": "-3-z"}


@pytest.mark.parametrize(
    ("conditions", "outcome"),
    [
        ([{"Type": "Equals", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 3}], True),
        ([{"Type": "Equals", "LeftValue": {"Get": "Parameters.Name"}, "RightValue": "other"}], False),
        ([{"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.X"}, "RightValue": 0.5}], True),
        ([{"Type": "GreaterThan", "LeftValue": 3, "RightValue": {"Get": "Parameters.N"}}], False),
        ([{"Type": "GreaterThanOrEqualTo", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 3}], True),
        ([{"Type": "LessThan", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 3.5}], True),
        ([{"Type": "LessThanOrEqualTo", "LeftValue": {"Get": "Parameters.X"}, "RightValue": 0.7}], False),
        ([{"Type": "In", "QueryValue": {"Get": "Parameters.Name"}, "Values": ["a", "model", "b"]}], True),
        ([{"Type": "In", "QueryValue": {"Get": "Parameters.N"}, "Values": [1, 2]}], False),
        (
            [
                {
                    "Type": "Not",
                    "Expression": {
                        "Type": "Equals",
                        "LeftValue": {"Get": "Parameters.Flag"},
                        "RightValue": True,
                    },
                }
            ],
            False,
        ),
        (
            [
                {
                    "Type": "Or",
                    "Conditions": [
                        {"Type": "Equals", "LeftValue": 1, "RightValue": 2},
                        {"Type": "LessThan", "LeftValue": {"Get": "Parameters.X"}, "RightValue": 1},
                    ],
                }
            ],
            True,
        ),
        (
            # All conditions of the list must hold.
            [
                {"Type": "Equals", "LeftValue": {"Get": "Parameters.Flag"}, "RightValue": True},
                {"Type": "Equals", "LeftValue": {"Get": "Parameters.N"}, "RightValue": 4},
            ],
            False,
        ),
    ],
)
def test_condition_types(emulator: CallbackEmulator, conditions: list[dict[str, Any]], outcome: bool) -> None:
    definition = {
        "Version": "2020-12-01",
        "Parameters": [
            {"Name": "N", "Type": "Integer", "DefaultValue": 3},
            {"Name": "X", "Type": "Float", "DefaultValue": 0.75},
            {"Name": "Name", "Type": "String", "DefaultValue": "model"},
            {"Name": "Flag", "Type": "Boolean", "DefaultValue": True},
        ],
        "Steps": [
            {
                "Name": "Decide",
                "Type": "Condition",
                "Arguments": {
                    "Conditions": conditions,
                    "IfSteps": [
                        {"Name": "IfBranch", "Type": "Fail", "Arguments": {"ErrorMessage": "took if"}}
                    ],
                    "ElseSteps": [
                        {
                            "Name": "ElseBranch",
                            "Type": "Fail",
                            "Arguments": {
                                "ErrorMessage": {"Std:Join": {"On": " ", "Values": ["took", "else"]}}
                            },
                        }
                    ],
                },
            }
        ],
    }
    arn = _start(emulator, definition)
    described = emulator.describe_execution(arn)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert described["FailureReason"] == ("took if" if outcome else "took else")
    assert _steps(emulator, arn)["Decide"]["Metadata"]["Condition"]["Outcome"] == str(outcome)


def test_comparing_incompatible_values_fails_the_execution(emulator: CallbackEmulator) -> None:
    definition = {
        "Version": "2020-12-01",
        "Steps": [
            {
                "Name": "Decide",
                "Type": "Condition",
                "Arguments": {
                    "Conditions": [{"Type": "GreaterThan", "LeftValue": "text", "RightValue": 1}],
                    "IfSteps": [],
                    "ElseSteps": [],
                },
            }
        ],
    }
    arn = _start(emulator, definition)
    described = emulator.describe_execution(arn)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "Decide" in described["FailureReason"]


def test_missing_queue_fails_the_callback_step(emulator: CallbackEmulator) -> None:
    url = f"https://sqs.us-east-1.amazonaws.com/{emulator.account_id}/does-not-exist-{uuid.uuid4().hex[:6]}"
    definition = {
        "Version": "2020-12-01",
        "Steps": [{"Name": "Cb", "Type": "Callback", "Arguments": {}, "SqsQueueUrl": url}],
    }
    arn = _start(emulator, definition)
    described = emulator.describe_execution(arn)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "Cb" in described["FailureReason"]


def test_start_rejects_bad_definitions(emulator: CallbackEmulator, sm: Any) -> None:
    for definition in (
        {"Steps": [{"Name": "A", "Type": "Processing", "DependsOn": ["Nope"]}]},
        {
            "Steps": [
                {"Name": "A", "Type": "Processing", "DependsOn": ["B"]},
                {"Name": "B", "Type": "Processing", "DependsOn": ["A"]},
            ]
        },
        {"Steps": [{"Name": "A", "Type": "Processing"}, {"Name": "A", "Type": "Processing"}]},
    ):
        name = _name()
        emulator.create_pipeline(name, definition)
        with pytest.raises(ClientError) as exc_info:
            sm.start_pipeline_execution(PipelineName=name)
        assert _error(exc_info)[0] == "ValidationException"
    with pytest.raises(ClientError) as exc_info:
        sm.start_pipeline_execution(PipelineName="no-such-pipeline")
    assert _error(exc_info)[0] == "ResourceNotFound"


# ---------------------------------------------------------------------- validation


def _executing_callback(emulator: CallbackEmulator, sqs: Any, queue_url: str) -> tuple[str, str]:
    arn = _start(emulator, _callback_definition(queue_url))
    return arn, _receive(sqs, queue_url)["token"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"CallbackToken": "abc"}, "CallbackToken"),
        ({"CallbackToken": "abcdefghijk"}, "CallbackToken"),
        ({"CallbackToken": "abcde-ghij"}, "CallbackToken"),
        ({"OutputParameters": [{"Name": f"o{i}", "Value": "1"} for i in range(51)]}, "OutputParameters"),
        ({"OutputParameters": [{"Name": "n" * 257, "Value": "1"}]}, "Name"),
        ({"OutputParameters": [{"Name": "count", "Value": "1" * 1025}]}, "Value"),
        ({"ClientRequestToken": "c" * 31}, "ClientRequestToken"),
        ({"ClientRequestToken": "c" * 129}, "ClientRequestToken"),
    ],
)
def test_success_validation_names_the_field(
    emulator: CallbackEmulator,
    sm_unchecked: Any,
    sqs: Any,
    queue_url: str,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    arn, token = _executing_callback(emulator, sqs, queue_url)
    request = {"CallbackToken": token, **kwargs}
    with pytest.raises(ClientError) as exc_info:
        sm_unchecked.send_pipeline_execution_step_success(**request)
    code, message, status = _error(exc_info)
    assert (code, status) == ("ValidationException", 400)
    assert field.lower() in message.lower()
    assert _steps(emulator, arn)["First"]["StepStatus"] == "Executing"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"CallbackToken": "short"}, "CallbackToken"),
        ({"FailureReason": "r" * 257}, "FailureReason"),
        ({"ClientRequestToken": "c" * 10}, "ClientRequestToken"),
    ],
)
def test_failure_validation_names_the_field(
    emulator: CallbackEmulator,
    sm_unchecked: Any,
    sqs: Any,
    queue_url: str,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    arn, token = _executing_callback(emulator, sqs, queue_url)
    with pytest.raises(ClientError) as exc_info:
        sm_unchecked.send_pipeline_execution_step_failure(**{"CallbackToken": token, **kwargs})
    code, message, _ = _error(exc_info)
    assert code == "ValidationException"
    assert field.lower() in message.lower()
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Executing"


def test_limits_are_inclusive(emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str) -> None:
    declared = [{"OutputName": f"o{i}" + "x" * 250, "OutputType": "String"} for i in range(50)]
    arn = _start(emulator, _callback_definition(queue_url, outputs=declared))
    token = _receive(sqs, queue_url)["token"]
    outputs = [{"Name": d["OutputName"][:256], "Value": "v" * 1024} for d in declared]
    assert all(len(o["Name"]) <= 256 for o in outputs)
    sm.send_pipeline_execution_step_success(
        CallbackToken=token, OutputParameters=outputs, ClientRequestToken="c" * 128
    )
    stored = _steps(emulator, arn)["First"]["Metadata"]["Callback"]["OutputParameters"]
    assert len(stored) == 50


def test_unknown_token_and_execution_are_resource_not_found(emulator: CallbackEmulator, sm: Any) -> None:
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.send_pipeline_execution_step_success(CallbackToken="AAAAAAAAAA")
    with pytest.raises(ClientError) as exc_info:
        sm.send_pipeline_execution_step_failure(CallbackToken="ZZZZZZZZZZ", FailureReason="x")
    assert _error(exc_info)[:1] == ("ResourceNotFound",)
    assert _error(exc_info)[2] == 400
    missing = f"arn:aws:sagemaker:us-east-1:{emulator.account_id}:pipeline/nope/execution/abcdefabcdef"
    for call in (
        lambda: sm.describe_pipeline_execution(PipelineExecutionArn=missing),
        lambda: sm.list_pipeline_execution_steps(PipelineExecutionArn=missing),
        lambda: sm.stop_pipeline_execution(PipelineExecutionArn=missing),
        lambda: sm.describe_pipeline_definition_for_execution(PipelineExecutionArn=missing),
    ):
        with pytest.raises(ClientError) as exc_info:
            call()
        assert _error(exc_info)[0] == "ResourceNotFound"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"MaxResults": 0}, "MaxResults"),
        ({"MaxResults": 101}, "MaxResults"),
        ({"SortOrder": "Sideways"}, "SortOrder"),
        ({"NextToken": "garbage"}, "NextToken"),
    ],
)
def test_list_steps_validation(
    emulator: CallbackEmulator,
    sm_unchecked: Any,
    sqs: Any,
    queue_url: str,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    arn, _ = _executing_callback(emulator, sqs, queue_url)
    with pytest.raises(ClientError) as exc_info:
        sm_unchecked.list_pipeline_execution_steps(PipelineExecutionArn=arn, **kwargs)
    code, message, _ = _error(exc_info)
    assert code == "ValidationException"
    assert field.lower() in message.lower()


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("strict", [True, False])
def test_strict_output_names(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str, strict: bool
) -> None:
    emulator.configure(strict_output_names=strict)
    arn, token = _executing_callback(emulator, sqs, queue_url)
    outputs = [{"Name": "count", "Value": "3"}, {"Name": "undeclared_thing", "Value": "x"}]
    if strict:
        with pytest.raises(ClientError) as exc_info:
            sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=outputs)
        code, message, _ = _error(exc_info)
        assert code == "ValidationException"
        assert "undeclared_thing" in message
        assert _steps(emulator, arn)["First"]["StepStatus"] == "Executing"
    else:
        sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=outputs)
        first = _steps(emulator, arn)["First"]
        assert first["StepStatus"] == "Succeeded"
        assert first["Metadata"]["Callback"]["OutputParameters"] == [{"Name": "count", "Value": "3"}]


@pytest.mark.parametrize(
    ("name", "value", "type_name"),
    [
        ("count", "4.0", "Integer"),
        ("count", "12a", "Integer"),
        ("score", "nan", "Float"),
        ("score", "high", "Float"),
        ("ok", "yes", "Boolean"),
    ],
)
def test_strict_output_types_rejects(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str, name: str, value: str, type_name: str
) -> None:
    _, token = _executing_callback(emulator, sqs, queue_url)
    with pytest.raises(ClientError) as exc_info:
        sm.send_pipeline_execution_step_success(
            CallbackToken=token, OutputParameters=[{"Name": name, "Value": value}]
        )
    code, message, _ = _error(exc_info)
    assert code == "ValidationException"
    assert name in message
    assert type_name in message


def test_lenient_output_types_fail_the_reader(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    emulator.configure(strict_output_types=False)
    arn = _start(emulator, SDK_DEFINITION, CallbackQueueUrl=queue_url)
    token = _receive(sqs, queue_url)["token"]
    outputs = [dict(o) for o in GOOD_OUTPUTS]
    outputs[1]["Value"] = "high"
    sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=outputs)
    described = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "CheckAuc" in described["FailureReason"]
    assert "auc" in described["FailureReason"]
    assert "Float" in described["FailureReason"]
    steps = _steps(emulator, arn)
    assert steps["ScoreInWarehouse"]["Metadata"]["Callback"]["OutputParameters"][1] == {
        "Name": "auc",
        "Value": "high",
    }
    assert steps["CheckAuc"]["StepStatus"] == "Failed"


@pytest.mark.parametrize("strict", [True, False])
def test_conflict_on_reclose(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str, strict: bool
) -> None:
    emulator.configure(conflict_on_reclose=strict)
    arn = _start(emulator, SDK_DEFINITION, CallbackQueueUrl=queue_url)
    token = _receive(sqs, queue_url)["token"]
    sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=GOOD_OUTPUTS)
    _receive(sqs, queue_url)  # HumanApproval: the execution is still running
    again = [{"Name": "rows_scored", "Value": "1"}]
    if strict:
        with pytest.raises(sm.exceptions.ConflictException):
            sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=again)
        with pytest.raises(ClientError) as exc_info:
            sm.send_pipeline_execution_step_failure(CallbackToken=token, FailureReason="late")
        assert _error(exc_info)[0] == "ConflictException"
    else:
        response = sm.send_pipeline_execution_step_success(CallbackToken=token, OutputParameters=again)
        assert response["PipelineExecutionArn"] == arn
        sm.send_pipeline_execution_step_failure(CallbackToken=token, FailureReason="late")
    step = _steps(emulator, arn)["ScoreInWarehouse"]
    assert step["StepStatus"] == "Succeeded"
    assert step["Metadata"]["Callback"]["OutputParameters"] == GOOD_OUTPUTS
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Executing"


@pytest.mark.parametrize(
    ("on_stopped_or_failed", "on_reclose", "expected"),
    [
        (True, True, "ConflictException"),
        (True, False, "ConflictException"),
        (False, True, "ConflictException"),
        (False, False, None),
    ],
)
def test_conflict_on_stopped_or_failed(
    emulator: CallbackEmulator,
    sm: Any,
    sqs: Any,
    queue_url: str,
    on_stopped_or_failed: bool,
    on_reclose: bool,
    expected: str | None,
) -> None:
    emulator.configure(conflict_on_stopped_or_failed=on_stopped_or_failed, conflict_on_reclose=on_reclose)
    arn, token = _executing_callback(emulator, sqs, queue_url)
    sm.send_pipeline_execution_step_failure(CallbackToken=token, FailureReason="broken")
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Failed"
    if expected:
        with pytest.raises(ClientError) as exc_info:
            sm.send_pipeline_execution_step_success(CallbackToken=token)
        assert _error(exc_info)[0] == expected
    else:
        assert sm.send_pipeline_execution_step_success(CallbackToken=token)["PipelineExecutionArn"] == arn
    assert _steps(emulator, arn)["First"]["StepStatus"] == "Failed"
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Failed"


@pytest.mark.parametrize("strict", [True, False])
def test_strict_start_parameters(emulator: CallbackEmulator, sm: Any, queue_url: str, strict: bool) -> None:
    emulator.configure(strict_start_parameters=strict)
    name = _name()
    emulator.create_pipeline(name, SDK_DEFINITION)
    for parameters, mentioned in (
        ([{"Name": "NotDeclared", "Value": "1"}], "NotDeclared"),
        ([{"Name": "BatchSize", "Value": "many"}], "BatchSize"),
    ):
        request = {
            "PipelineName": name,
            "PipelineParameters": [{"Name": "CallbackQueueUrl", "Value": queue_url}, *parameters],
        }
        if strict:
            with pytest.raises(ClientError) as exc_info:
                sm.start_pipeline_execution(**request)
            code, message, _ = _error(exc_info)
            assert code == "ValidationException"
            assert mentioned in message
        else:
            arn = sm.start_pipeline_execution(**request)["PipelineExecutionArn"]
            assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Executing"


def test_settings_round_trip(emulator: CallbackEmulator) -> None:
    defaults = emulator.settings()
    assert defaults == {
        "strict_output_names": True,
        "strict_output_types": True,
        "conflict_on_reclose": True,
        "conflict_on_stopped_or_failed": True,
        "strict_start_parameters": True,
        "step_delay_seconds": 0.0,
    }
    changed = emulator.configure(strict_output_names=False, step_delay_seconds=1)
    assert changed["strict_output_names"] is False
    assert changed["step_delay_seconds"] == 1.0
    with pytest.raises(EmulatorError, match="no_such_setting"):
        emulator.configure(no_such_setting=True)
    with pytest.raises(EmulatorError, match="boolean"):
        emulator.configure(strict_output_types="yes")
    emulator.reset()
    assert emulator.settings() == defaults


# ---------------------------------------------------------------------- idempotency


def test_same_client_request_token_is_idempotent(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    arn, token = _executing_callback(emulator, sqs, queue_url)
    crt = "a" * 40
    outputs = [{"Name": "count", "Value": "7"}]
    first = sm.send_pipeline_execution_step_success(
        CallbackToken=token, OutputParameters=outputs, ClientRequestToken=crt
    )
    second_token = _receive(sqs, queue_url)["token"]
    # Repeated after the step closed (and the next step started): same answer, nothing changes.
    for _ in range(2):
        again = sm.send_pipeline_execution_step_success(
            CallbackToken=token, OutputParameters=outputs, ClientRequestToken=crt
        )
        assert again["PipelineExecutionArn"] == first["PipelineExecutionArn"] == arn
    assert emulator.queue_messages(queue_url) == []
    steps = _steps(emulator, arn)
    assert steps["First"]["Metadata"]["Callback"]["OutputParameters"] == outputs
    assert steps["Second"]["StepStatus"] == "Executing"

    # Same ClientRequestToken, different request: a ValidationException.
    with pytest.raises(ClientError) as exc_info:
        sm.send_pipeline_execution_step_success(
            CallbackToken=token, OutputParameters=[{"Name": "count", "Value": "8"}], ClientRequestToken=crt
        )
    code, message, _ = _error(exc_info)
    assert code == "ValidationException"
    assert "ClientRequestToken" in message
    with pytest.raises(ClientError) as exc_info:
        sm.send_pipeline_execution_step_failure(
            CallbackToken=second_token, FailureReason="x", ClientRequestToken=crt
        )
    assert _error(exc_info)[0] == "ValidationException"
    assert steps["Second"]["StepStatus"] == _steps(emulator, arn)["Second"]["StepStatus"] == "Executing"

    failure_crt = "f" * 32
    for _ in range(2):
        sm.send_pipeline_execution_step_failure(
            CallbackToken=second_token, FailureReason="nope", ClientRequestToken=failure_crt
        )
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Failed"


def test_start_and_stop_are_idempotent(emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str) -> None:
    name = _name()
    emulator.create_pipeline(name, _callback_definition(queue_url))
    crt = "s" * 36
    arns = {
        sm.start_pipeline_execution(PipelineName=name, ClientRequestToken=crt)["PipelineExecutionArn"]
        for _ in range(2)
    }
    assert len(arns) == 1
    assert len(sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]) == 1
    (arn,) = arns
    _receive(sqs, queue_url)
    stop_crt = "t" * 36
    for _ in range(2):
        sm.stop_pipeline_execution(PipelineExecutionArn=arn, ClientRequestToken=stop_crt)
    assert len(emulator.queue_messages(queue_url)) == 1  # one Stopping message


# ---------------------------------------------------------------------- pagination


def test_pagination_with_max_results_one(
    emulator: CallbackEmulator, sm: Any, sqs: Any, queue_url: str
) -> None:
    arn = _start(emulator, SDK_DEFINITION, CallbackQueueUrl=queue_url)
    sm.send_pipeline_execution_step_success(
        CallbackToken=_receive(sqs, queue_url)["token"], OutputParameters=GOOD_OUTPUTS
    )

    def collect(**kwargs: Any) -> list[str]:
        names: list[str] = []
        request: dict[str, Any] = {"PipelineExecutionArn": arn, "MaxResults": 1, **kwargs}
        while True:
            page = sm.list_pipeline_execution_steps(**request)
            assert len(page["PipelineExecutionSteps"]) <= 1
            names += [s["StepName"] for s in page["PipelineExecutionSteps"]]
            if "NextToken" not in page:
                return names
            request["NextToken"] = page["NextToken"]

    ascending = collect(SortOrder="Ascending")
    assert ascending == ["ScoreInWarehouse", "CheckAuc", "HumanApproval"]
    assert collect(SortOrder="Descending") == ascending[::-1]
    assert collect() == ascending[::-1]  # Descending by default
    pages = list(
        sm.get_paginator("list_pipeline_execution_steps").paginate(
            PipelineExecutionArn=arn, SortOrder="Ascending", PaginationConfig={"PageSize": 1}
        )
    )
    assert [s["StepName"] for p in pages for s in p["PipelineExecutionSteps"]] == ascending
    assert len(pages) == 3
    assert [s["StepName"] for s in emulator.list_steps(arn)] == ascending
