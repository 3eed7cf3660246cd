"""
The demo: a SageMaker pipeline with a callback step, closed from Python through the hook, all
against the local emulator. Prints each step's status and the output parameters SageMaker
received; exits non-zero unless the execution succeeded.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "example_dags" / "pipelines" / "sdk-callback-with-condition.json"


def main() -> int:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-sm-callback-demo-")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

    from airflow_sm_callback.callback import CallbackMatcher
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.testing import CallbackEmulator

    with CallbackEmulator() as emulator:
        os.environ.update(emulator.airflow_connection("aws_default"))
        queue_url = emulator.create_queue("sagemaker-callbacks")
        emulator.create_pipeline("scoring-pipeline", DEFINITION)
        arn = emulator.start_execution("scoring-pipeline", {"CallbackQueueUrl": queue_url})
        print(f"Started {arn}")
        print(f"  status: {emulator.describe_execution(arn)['PipelineExecutionStatus']}")

        hook = SageMakerCallbackHook(aws_conn_id="aws_default")
        answers = {
            "ScoreInWarehouse": {
                "rows_scored": 1200,
                "auc": 0.91,
                "passed": True,
                "report_uri": "s3://demo/report.html",
            },
            "HumanApproval": {"approved_by": "data-platform-oncall"},
        }
        deadline = time.monotonic() + 60
        while emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Executing":
            if time.monotonic() > deadline:
                print("The execution did not finish in time", file=sys.stderr)
                return 1
            claim = hook.poll_for_callback(
                queue_url, CallbackMatcher(pipeline_execution_arn=arn), wait_time_seconds=2
            )
            if claim is None:
                continue
            step = hook.find_callback_step(arn, token=claim.callback.token)
            assert step is not None
            print(f"Callback for step {step.name} with arguments {claim.callback.arguments}")
            types = hook.get_output_types(arn, step.name)
            hook.send_step_success(
                claim.callback.token, answers[step.name], execution_arn=arn, declared_types=types
            )
            hook.complete_handoff(queue_url, claim.receipt_handles)
            print(f"  closed {step.name} with {answers[step.name]}")

        status = emulator.wait_for_execution(arn)
        print(f"\nExecution {arn.rsplit('/', 1)[-1]}: {status}")
        for step in emulator.list_steps(arn):
            outputs = step.get("Metadata", {}).get("Callback", {}).get("OutputParameters")
            shown = ", ".join(f"{o['Name']}={o['Value']}" for o in outputs or [])
            print(f"  {step['StepName']:<18} {step['StepStatus']:<10} {shown}")
        print(f"Messages left on the queue: {len(emulator.queue_messages(queue_url))}")
        return 0 if status == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
