"""The example DAGs and the operators in real Airflow runs, with the emulator's state asserted."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from airflow_sm_callback import _airflow
from airflow_sm_callback.testing import CallbackEmulator
from tests.fixtures import EVENTS_PIPELINE, callback_definition, unique
from tests.system.airflow_run import DagRunResult, airflow_env, dags_test, token_scan_text
from tests.system.stack import ROOT, AirflowStack

sys.path.insert(0, str(ROOT / "scripts"))
from create_callback_pipeline import create

pytestmark = pytest.mark.system

SDK_DEFINITION = ROOT / "example_dags" / "pipelines" / "sdk-callback-with-condition.json"
EVENTS_DEFINITION = ROOT / "example_dags" / "pipelines" / "events-callback.json"


@pytest.fixture
def example_env(
    emulator: CallbackEmulator, airflow_db: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The example pipeline, its queue and its input data, as the setup script creates them."""
    emulator.reset()
    for key, value in emulator.aws_env().items():
        monkeypatch.setenv(key, value)
    pipeline = unique("example")
    bucket = unique("data")
    created = create(
        pipeline_name=pipeline,
        definition=SDK_DEFINITION,
        queue_name=unique("callbacks"),
        region=emulator.region,
        endpoint_url=emulator.endpoint_url,
        sample_data=f"s3://{bucket}/scoring/input.csv",
    )
    conf = {
        "queue_url": created["queue_url"],
        "pipeline_name": pipeline,
        "input_uri": f"s3://{bucket}/scoring/input.csv",
    }
    return {
        "conf": conf,
        "env": airflow_env(emulator, ROOT / "example_dags"),
        "pipeline": pipeline,
        "bucket": bucket,
    }


def only_execution(emulator: CallbackEmulator, pipeline: str) -> str:
    (summary,) = emulator.client("sagemaker").list_pipeline_executions(PipelineName=pipeline)[
        "PipelineExecutionSummaries"
    ]
    return str(summary["PipelineExecutionArn"])


def outputs(emulator: CallbackEmulator, arn: str, step: str) -> list[dict[str, str]]:
    return list(emulator.step(arn, step)["Metadata"]["Callback"]["OutputParameters"])


def assert_no_tokens(result: DagRunResult, emulator: CallbackEmulator, arn: str) -> None:
    """No token in the run's logs nor in the rendered template fields Airflow stored (and shows)."""
    assert result.rendered, "no rendered template fields were stored"
    rendered = json.dumps(result.rendered)
    for step in emulator.list_steps(arn):
        token = step.get("Metadata", {}).get("Callback", {}).get("CallbackToken")
        if token:
            assert token not in token_scan_text(result.output)
            assert token not in rendered


@pytest.mark.parametrize("dag_id", ["example_sagemaker_callback", "example_sagemaker_callback_decorator"])
def test_example_closes_both_callback_steps(
    dag_id: str, emulator: CallbackEmulator, example_env: dict[str, Any]
) -> None:
    result = dags_test(dag_id, example_env["conf"], example_env["env"])
    assert result.returncode == 0, result.output[-5000:]
    arn = only_execution(emulator, example_env["pipeline"])
    assert emulator.wait_for_execution(arn) == "Succeeded"
    report = f"s3://{example_env['bucket']}/reports/{arn.rsplit('/', 1)[-1]}.json"
    assert outputs(emulator, arn, "ScoreInWarehouse") == [
        {"Name": "rows_scored", "Value": "200"},
        {"Name": "auc", "Value": "0.9015"},
        {"Name": "passed", "Value": "true"},
        {"Name": "report_uri", "Value": report},
    ]
    assert outputs(emulator, arn, "HumanApproval") == [{"Name": "approved_by", "Value": "airflow"}]
    assert [s["StepStatus"] for s in emulator.list_steps(arn)] == ["Succeeded"] * 3
    assert emulator.queue_messages(example_env["conf"]["queue_url"]) == []
    body = emulator.client("s3").get_object(Bucket=example_env["bucket"], Key=report.split("/", 3)[3])["Body"]
    assert json.loads(body.read())["rows"] == 200
    assert_no_tokens(result, emulator, arn)


def test_example_failure_path_closes_the_step_as_failed(
    emulator: CallbackEmulator, example_env: dict[str, Any]
) -> None:
    conf = {**example_env["conf"], "input_uri": f"s3://{example_env['bucket']}/scoring/missing.csv"}
    result = dags_test("example_sagemaker_callback", conf, example_env["env"])
    assert result.task_state("score") == "failed"
    assert result.task_state("close_scoring") == "upstream_failed"
    assert result.task_state("fail_scoring") == "success"
    arn = only_execution(emulator, example_env["pipeline"])
    assert emulator.wait_for_execution(arn) == "Failed"
    step = emulator.step(arn, "ScoreInWarehouse")
    assert step["StepStatus"] == "Failed"
    assert step["FailureReason"].startswith(
        "Airflow tasks failed: score (DAG example_sagemaker_callback, run "
    )
    assert [s["StepName"] for s in emulator.list_steps(arn)] == ["ScoreInWarehouse"]
    assert emulator.queue_messages(conf["queue_url"]) == []


@pytest.fixture
def ops(emulator: CallbackEmulator, callback_queue: str, airflow_db: str) -> dict[str, Any]:
    emulator.reset()
    name = unique("ops")
    emulator.create_pipeline(
        name,
        callback_definition(
            callback_queue,
            outputs={"rows": "Integer", "auc": "Float", "passed": "Boolean", "uri": "String"},
            arguments={"jinja": "{{ 7 * 7 }}"},
        ),
    )
    return {"name": name, "queue_url": callback_queue, "env": airflow_env(emulator)}


def test_values_from_jinja_and_from_xcom_arrive_as_declared_types(
    emulator: CallbackEmulator, ops: dict[str, Any]
) -> None:
    arns = [emulator.start_execution(ops["name"]) for _ in range(2)]
    result = dags_test("ops_types", {"queue_url": ops["queue_url"], "execution_arns": arns}, ops["env"])
    assert result.returncode == 0, result.output[-5000:]
    expected = [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "0.91"},
        {"Name": "passed", "Value": "true"},
        {"Name": "uri", "Value": "s3://b/k"},
    ]
    for arn, uri in zip(arns, ["{{ 7 * 7 }}", "s3://b/k"], strict=True):
        assert emulator.wait_for_execution(arn) == "Succeeded"
        assert outputs(emulator, arn, "Score") == [*expected[:3], {"Name": "uri", "Value": uri}]
    assert result.xcom["jinja_close"] == arns[0]
    link = [line for line in result.output.splitlines() if "sagemaker_pipeline_execution" in line]
    assert link or "Pushing xcom" in result.output


def test_retries_never_close_twice_and_a_retry_can_succeed(
    emulator: CallbackEmulator, ops: dict[str, Any]
) -> None:
    arns = [emulator.start_execution(ops["name"]) for _ in range(2)]
    result = dags_test("ops_retries", {"queue_url": ops["queue_url"], "execution_arns": arns}, ops["env"])
    assert result.returncode == 0, result.output[-5000:]
    assert result.tasks["close"] == ("success", 2)
    assert result.tasks["flaky"] == ("success", 2)
    # One close request each: the retried close saw its step already Succeeded; the flaky work
    # left its step open on the first try.
    assert emulator.request_counts("sagemaker")["SendPipelineExecutionStepSuccess"] == 2
    assert emulator.request_counts("sagemaker")["SendPipelineExecutionStepFailure"] == 0
    assert outputs(emulator, arns[0], "Score") == [{"Name": "rows", "Value": "1"}]
    assert outputs(emulator, arns[1], "Score") == [{"Name": "rows", "Value": "2"}]
    for arn in arns:
        assert emulator.wait_for_execution(arn) == "Succeeded"


def test_failures_close_the_step_as_failed(emulator: CallbackEmulator, ops: dict[str, Any]) -> None:
    arns = [emulator.start_execution(ops["name"]) for _ in range(3)]
    conf = {"queue_url": ops["queue_url"], "execution_arns": arns, "outputs": {"rows": {"nested": 1}}}
    result = dags_test("ops_failures", conf, ops["env"])
    assert result.task_state("bad_close") == "failed"
    assert "output parameter 'rows' is a nested value" in result.output
    assert emulator.request_counts("sagemaker")["SendPipelineExecutionStepSuccess"] == 0
    reasons = {}
    for arn in arns:
        assert emulator.wait_for_execution(arn) == "Failed"
        step = emulator.step(arn, "Score")
        assert step["StepStatus"] == "Failed"
        reasons[arn] = step["FailureReason"]
    assert reasons[arns[0]].startswith("Airflow tasks failed: bad_close (DAG ops_failures")
    assert reasons[arns[1]] == "Airflow task ops_failures.broken failed: warehouse job exploded"
    # `airflow dags test` passes the exception to failure callbacks from Airflow 3.3 (its
    # in-process supervisor left context["exception"] unset before); a real task runner always does.
    said = "spark job failed" if _airflow.AIRFLOW_V_3_3_PLUS else "no exception given"
    assert reasons[arns[2]] == f"Airflow task ops_failures.notified failed: {said}"
    assert emulator.queue_messages(ops["queue_url"]) == []


@pytest.mark.xdist_group("stack")
def test_example_events_each_callback_handled_once(
    emulator: CallbackEmulator, events_queue: str, stack: AirflowStack
) -> None:
    stack.wait_for_dag("example_sagemaker_callback_events")
    # Runs that ended before this test (the shared stack also serves fault-injection tests) are
    # not its; one still queued or running (the periodic sweep's) may take its callbacks.
    earlier = {
        r["dag_run_id"]
        for r in stack.request("GET", "dags/example_sagemaker_callback_events/dagRuns")["dag_runs"]
        if r["state"] in ("success", "failed")
    }
    emulator.reset()
    emulator.create_pipeline(EVENTS_PIPELINE, EVENTS_DEFINITION)
    records = ["alpha", "bravo-2", "charlie-three"]
    arns = {
        record: emulator.start_execution(
            EVENTS_PIPELINE, {"CallbackQueueUrl": events_queue, "RecordId": record}
        )
        for record in records
    }
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if all(
            emulator.describe_execution(arn)["PipelineExecutionStatus"] != "Executing"
            for arn in arns.values()
        ):
            break
        time.sleep(2)
    for record, arn in arns.items():
        assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Succeeded", record
        assert outputs(emulator, arn, "EnrichRecord") == [
            {"Name": "enriched_by", "Value": "airflow"},
            {"Name": "record_length", "Value": str(len(record))},
        ]
    # Each callback was closed once, by one mapped task instance (whichever run it landed in:
    # an asset-triggered run, or the periodic sweep).
    assert emulator.request_counts("sagemaker")["SendPipelineExecutionStepSuccess"] == len(records)
    runs = [
        r["dag_run_id"]
        for r in stack.request("GET", "dags/example_sagemaker_callback_events/dagRuns")["dag_runs"]
        if r["dag_run_id"] not in earlier
    ]
    assert set(stack.wait_for_runs("example_sagemaker_callback_events", runs, within=120).values()) == {
        "success"
    }
    handled = [
        ti["state"]
        for run_id in runs
        for ti in stack.request(
            "GET", f"dags/example_sagemaker_callback_events/dagRuns/{run_id}/taskInstances/enrich/listMapped"
        )["task_instances"]
    ]
    assert handled.count("success") >= len(records), handled
    left = emulator.queue_messages(events_queue)
    if _airflow.AIRFLOW_V_3_3_PLUS:
        assert left == []
    else:
        # Below 3.3 Airflow confirms no asset event's persist: the watcher's messages stay hidden
        # for its handoff_visibility and are deleted when they come back (the integration test
        # test_a_watcher_s_messages_are_deleted_only_once_its_asset_event_is_durable).
        assert len(left) == len(records), left
        assert all(m.get("InFlight") for m in left), left
    logs = stack.logs()
    for arn in arns.values():
        token = emulator.step(arn, "EnrichRecord")["Metadata"]["Callback"]["CallbackToken"]
        assert token not in token_scan_text(logs)
