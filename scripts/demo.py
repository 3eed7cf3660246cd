"""
The demo: example 1 end to end against the local emulator.

Starts the emulator, creates the callback queue, the pipeline (the SDK-generated definition with
two callback steps) and the example's input data, runs ``example_sagemaker_callback`` through
``airflow dags test`` in a throwaway AIRFLOW_HOME, and prints each step's status and the output
parameters SageMaker received. Exits non-zero unless the execution succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from create_callback_pipeline import create  # noqa: E402

from airflow_sm_callback.testing import CallbackEmulator  # noqa: E402

DEFINITION = ROOT / "example_dags" / "pipelines" / "sdk-callback-with-condition.json"
PIPELINE = "sagemaker-callback-example"
INPUT = "s3://sagemaker-callback-example/scoring/input.csv"


def airflow(*args: str, env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode


def main() -> int:
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="airflow-sm-callback-demo-"))
    log = home / "airflow.log"
    try:
        with CallbackEmulator() as emulator:
            os.environ.update(emulator.aws_env())  # nothing reaches a real account
            created = create(
                pipeline_name=PIPELINE,
                definition=DEFINITION,
                queue_name="sagemaker-callbacks",
                region=emulator.region,
                endpoint_url=emulator.endpoint_url,
                sample_data=INPUT,
            )
            print(f"Emulator at {emulator.endpoint_url}")
            print(f"Queue     {created['queue_url']}")
            print(f"Pipeline  {created['pipeline_arn']}")
            env = {
                **os.environ,
                **emulator.aws_env(),
                **emulator.airflow_connection("aws_default"),
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            }
            print("\nRunning example_sagemaker_callback with `airflow dags test` ...")
            if airflow("db", "migrate", env=env, log=log) != 0:
                print(f"airflow db migrate failed; see {log}", file=sys.stderr)
                return 1
            conf = {"queue_url": created["queue_url"], "pipeline_name": PIPELINE, "input_uri": INPUT}
            code = airflow(
                "dags", "test", "example_sagemaker_callback", "-c", json.dumps(conf), env=env, log=log
            )

            executions = emulator.client("sagemaker").list_pipeline_executions(PipelineName=PIPELINE)
            summaries = executions.get("PipelineExecutionSummaries") or []
            if not summaries:
                print(
                    f"No pipeline execution was started (airflow exit code {code}); see {log}",
                    file=sys.stderr,
                )
                return 1
            arn = summaries[0]["PipelineExecutionArn"]
            status = emulator.wait_for_execution(arn, timeout=30)
            print(f"\nPipeline execution {arn.rsplit('/', 1)[-1]}: {status}")
            for step in emulator.list_steps(arn):
                callback = step.get("Metadata", {}).get("Callback")
                outputs = ", ".join(
                    f"{o['Name']}={o['Value']}" for o in (callback or {}).get("OutputParameters") or []
                )
                detail = outputs or step.get("FailureReason") or ""
                print(f"  {step['StepName']:<18} {step['StepStatus']:<10} {detail}")
            left = len(emulator.queue_messages(created["queue_url"]))
            print(f"Messages left on the queue: {left}")
            print(f"Took {time.monotonic() - started:.0f}s")
            if status == "Succeeded" and code == 0:
                shutil.rmtree(home, ignore_errors=True)
                return 0
            print(f"The run did not succeed (airflow exit code {code}); its log: {log}", file=sys.stderr)
            return 1
    except BaseException:
        print(f"Airflow home kept for inspection: {home}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
