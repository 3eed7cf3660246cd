"""The closing operators and the notifier against the emulator, called directly (no scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_sm_callback._airflow import AirflowException
from airflow_sm_callback.notifications.callback import SageMakerCallbackFailureNotifier
from airflow_sm_callback.operators.callback import (
    SageMakerCallbackFailureOperator,
    SageMakerCallbackSuccessOperator,
    merge_output_parameters,
)
from airflow_sm_callback.protocol import InvalidOutputParameters
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import callback_definition, unique

pytestmark = pytest.mark.integration

OUTPUTS = {"rows": "Integer", "auc": "Float", "passed": "Boolean", "uri": "String"}


@dataclass
class FakeTaskInstance:
    """The parts of a task instance the operators read: identity, tries, XCom pushes."""

    task_id: str = "close"
    dag_id: str = "dag"
    run_id: str = field(default_factory=lambda: unique("run"))
    map_index: int = -1
    try_number: int = 1
    max_tries: int = 0
    pushed: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, task_ids: str) -> Any:
        return self.pushed.get(f"pull:{task_ids}")

    def get_task_states(self, **_: Any) -> dict[str, Any]:
        raise RuntimeError("no supervisor here")


def context_for(task: Any, ti: FakeTaskInstance | None = None, **extra: Any) -> dict[str, Any]:
    return {"ti": ti or FakeTaskInstance(task_id=task.task_id), "task": task, **extra}


@pytest.fixture
def execution(emulator: CallbackEmulator, callback_queue: str, aws_conn: str) -> dict[str, Any]:
    """An execution whose callback step is open, with the callback the sensor would push."""
    name = unique("ops")
    emulator.create_pipeline(name, callback_definition(callback_queue, outputs=OUTPUTS))
    arn = emulator.start_execution(name)
    step = emulator.step(arn, "Score")
    token = step["Metadata"]["Callback"]["CallbackToken"]
    callback = {
        "token": token,
        "pipeline_execution_arn": arn,
        "step_name": "Score",
        "arguments": {"step_name": "score"},
        "status": "Executing",
    }
    emulator.clear_requests()
    return {"arn": arn, "token": token, "callback": callback, "name": name}


def closes(emulator: CallbackEmulator) -> tuple[int, int]:
    counts = emulator.request_counts("sagemaker")
    return counts["SendPipelineExecutionStepSuccess"], counts["SendPipelineExecutionStepFailure"]


def test_success_converts_text_to_declared_types_and_links(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close",
        callback=execution["callback"],
        output_parameters={"rows": "7", "auc": "0.91", "passed": "True", "uri": "s3://b/k"},
    )
    ti = FakeTaskInstance()
    assert op.execute(context_for(op, ti)) == execution["arn"]
    assert emulator.step(execution["arn"], "Score")["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "0.91"},
        {"Name": "passed", "Value": "true"},
        {"Name": "uri", "Value": "s3://b/k"},
    ]
    link = ti.pushed["sagemaker_pipeline_execution"]
    assert link["region_name"] == "us-east-1"
    assert link["pipeline_name"] == execution["name"]
    assert link["execution_id"] == execution["arn"].rsplit("/", 1)[-1]
    assert (
        SageMakerCallbackSuccessOperator.operator_extra_links[0]
        .format_link(**link)
        .startswith("https://console.aws.amazon.com/sagemaker/home?region=us-east-1#/pipelines/")
    )


def test_success_merges_whole_xcom_dicts_with_native_types(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close",
        callback=str(execution["callback"]),  # as Jinja renders a dict
        output_parameters=[{"rows": 7.0, "auc": 1}, {"passed": False, "uri": "u"}],
    )
    op.execute(context_for(op))
    assert emulator.step(execution["arn"], "Score")["Metadata"]["Callback"]["OutputParameters"] == [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "1.0"},
        {"Name": "passed", "Value": "false"},
        {"Name": "uri", "Value": "u"},
    ]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({f"p{i}": i for i in range(51)}, "51 output parameters given"),
        ({"rows": "many"}, "'rows' is declared Integer but got 'many'"),
        ({"rows": {"nested": 1}}, "'rows' is a nested value"),
        ({"rows": None}, "'rows' is None"),
        ({"extra": 1}, "'extra' is not declared by the callback step"),
        ([{"rows": 1}, {"rows": 2}], "'rows' is given twice"),
        ("not a dict", "must be a dict"),
    ],
)
def test_bad_outputs_fail_before_any_close(
    emulator: CallbackEmulator, execution: dict[str, Any], outputs: Any, message: str
) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close", callback=execution["callback"], output_parameters=outputs
    )
    with pytest.raises(InvalidOutputParameters, match=message):
        op.execute(context_for(op))
    assert closes(emulator) == (0, 0)
    assert emulator.step(execution["arn"], "Score")["StepStatus"] == "Executing"


def test_success_from_execution_and_step_name(emulator: CallbackEmulator, execution: dict[str, Any]) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close",
        callback="None",  # what Jinja renders when the XCom is missing
        pipeline_execution_arn=execution["arn"],
        callback_step_name="Score",
        output_parameters={"rows": 1},
    )
    op.execute(context_for(op))
    assert emulator.wait_for_execution(execution["arn"]) == "Succeeded"


def test_success_from_token_only_encodes_python_types(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close", callback_token=execution["token"], output_parameters={"rows": 3, "passed": True}
    )
    assert op.execute(context_for(op)) == execution["arn"]
    outputs = emulator.step(execution["arn"], "Score")["Metadata"]["Callback"]["OutputParameters"]
    assert outputs == [{"Name": "rows", "Value": "3"}, {"Name": "passed", "Value": "true"}]


def test_retried_success_does_not_close_twice(emulator: CallbackEmulator, execution: dict[str, Any]) -> None:
    op = SageMakerCallbackSuccessOperator(
        task_id="close", callback=execution["callback"], output_parameters={"rows": 1}
    )
    ti = FakeTaskInstance()
    op.execute(context_for(op, ti))
    ti.try_number = 2
    op.execute(context_for(op, ti))
    assert closes(emulator) == (1, 0)


def test_nothing_says_which_step(emulator: CallbackEmulator, aws_conn: str) -> None:
    op = SageMakerCallbackSuccessOperator(task_id="close", output_parameters={})
    with pytest.raises(ValueError, match="say which callback step to close"):
        op.execute(context_for(op))


def test_success_before_the_step_started_is_an_error(
    emulator: CallbackEmulator, callback_queue: str, aws_conn: str
) -> None:
    emulator.configure(step_delay_seconds=600)
    name = unique("slow")
    emulator.create_pipeline(name, callback_definition(callback_queue, first_step="Prepare"))
    arn = emulator.start_execution(name)
    op = SageMakerCallbackSuccessOperator(
        task_id="close", pipeline_execution_arn=arn, callback_step_name="Score"
    )
    with pytest.raises(AirflowException, match="has not started"):
        op.execute(context_for(op))
    fail = SageMakerCallbackFailureOperator(
        task_id="fail", pipeline_execution_arn=arn, callback_step_name="Score"
    )
    fail.execute(context_for(fail))
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Executing"
    stop = SageMakerCallbackFailureOperator(
        task_id="stop",
        pipeline_execution_arn=arn,
        callback_step_name="Score",
        stop_execution_if_not_started=True,
    )
    stop.execute(context_for(stop))
    assert emulator.wait_for_execution(arn) == "Stopped"


def test_failure_operator_from_callback_with_reason(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    op = SageMakerCallbackFailureOperator(
        task_id="fail", callback=execution["callback"], reason="warehouse job failed: " + "x" * 300
    )
    assert op.trigger_rule == "one_failed"
    op.execute(context_for(op))
    step = emulator.step(execution["arn"], "Score")
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"].startswith("warehouse job failed: xxx")
    assert len(step["FailureReason"]) == 256


def test_failure_operator_when_the_sensor_failed(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    op = SageMakerCallbackFailureOperator(
        task_id="fail", callback="None", pipeline_execution_arn=execution["arn"], callback_step_name="Score"
    )
    op.execute(context_for(op))
    step = emulator.step(execution["arn"], "Score")
    assert step["FailureReason"].startswith("Airflow tasks failed: an upstream task (DAG dag, run ")
    # Closed already: a second failure operator leaves it alone.
    again = SageMakerCallbackFailureOperator(task_id="again", pipeline_execution_arn=execution["arn"])
    again.execute(context_for(again))
    assert closes(emulator) == (0, 1)


def test_failure_operator_leaves_a_succeeded_step(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    done = SageMakerCallbackSuccessOperator(
        task_id="close", callback=execution["callback"], output_parameters={}
    )
    done.execute(context_for(done))
    op = SageMakerCallbackFailureOperator(task_id="fail", callback=execution["callback"])
    op.execute(context_for(op))
    assert emulator.step(execution["arn"], "Score")["StepStatus"] == "Succeeded"
    assert closes(emulator) == (1, 0)


def test_notifier_closes_only_when_the_task_will_not_be_retried(
    emulator: CallbackEmulator, execution: dict[str, Any]
) -> None:
    notifier = SageMakerCallbackFailureNotifier(callback_task_id="wait")

    class Task:
        task_id = "score"
        retries = 1

    ti = FakeTaskInstance(task_id="score", try_number=1, max_tries=1)
    ti.pushed["pull:wait"] = execution["callback"]
    notifier.notify(context_for(Task, ti, exception=RuntimeError("spark job failed")))
    assert closes(emulator) == (0, 0)
    ti.try_number = 2
    notifier.notify(context_for(Task, ti, exception=RuntimeError("spark job failed")))
    step = emulator.step(execution["arn"], "Score")
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"] == "Airflow task dag.score failed: spark job failed"


def test_merge_output_parameters() -> None:
    assert merge_output_parameters(None) == {}
    assert merge_output_parameters("None") == {}
    assert merge_output_parameters("{'a': 1}") == {"a": 1}
    assert merge_output_parameters('{"a": 1}') == {"a": 1}
    assert merge_output_parameters([{"Name": "a", "Value": "1"}]) == {"a": "1"}
    assert merge_output_parameters([{"a": 1}, None, "{'b': 2}"]) == {"a": 1, "b": 2}
    with pytest.raises(InvalidOutputParameters, match=r"output_parameters\[1\] must be a dict"):
        merge_output_parameters([{"a": 1}, 5])
