"""
Example 2: event-driven. Runs started by an ``AssetWatcher`` on the callback trigger.

The watcher runs ``SageMakerCallbackTrigger`` in the triggerer (sharing one poll of the queue
with every other trigger on it) and records an asset event per callback of the pipeline. Each
asset-triggered run maps ``enrich`` over the callbacks still waiting, one task instance per
callback, each doing the work and closing its step.

Why "still waiting" rather than "this run's events": Airflow starts one run for the asset events
queued when its scheduler loop looks, but consumes only those recorded up to the first one's
queue time, so a callback recorded a moment later is left to the *next* run. ``pending_callbacks``
takes the run's events plus the asset's recent ones and keeps those whose step is still open; a
sweep every ten minutes catches a callback whose next run would otherwise never come, and
``max_active_runs=1`` keeps two runs from handling the same callback.

An asset watcher is built when the DAG file is parsed, before any run exists, so its queue,
pipeline and connection cannot be DAG params: they come from the environment of every process
that parses this file (DAG processor, triggerer and workers): ``SAGEMAKER_CALLBACK_QUEUE_URL``,
``SAGEMAKER_CALLBACK_PIPELINE``, ``SAGEMAKER_CALLBACK_AWS_CONN_ID``. The pipeline is ``pipelines/events-callback.json``.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

try:
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
except ImportError:  # Airflow 3.0 has them in its core only
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger
from airflow_sm_callback.utils.asset_events import pending_callbacks

QUEUE_URL = os.environ.get(
    "SAGEMAKER_CALLBACK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/sagemaker-callbacks"
)
PIPELINE = os.environ.get("SAGEMAKER_CALLBACK_PIPELINE", "sagemaker-callback-events")
AWS_CONN_ID = os.environ.get("SAGEMAKER_CALLBACK_AWS_CONN_ID", "aws_default")

callbacks = Asset(
    name="sagemaker_callbacks",
    uri=f"sagemaker-callback://{PIPELINE}",
    watchers=[
        AssetWatcher(
            name="sagemaker_callback_watcher",
            trigger=SageMakerCallbackTrigger(
                queue_url=QUEUE_URL,
                matcher={"pipeline_name": PIPELINE, "arguments": {"step_name": "enrich"}},
                aws_conn_id=AWS_CONN_ID,
            ),
        )
    ],
)

with DAG(
    dag_id="example_sagemaker_callback_events",
    description="Runs started by SageMaker callbacks, through an AssetWatcher on the callback trigger",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("*/10 * * * *", timezone="UTC"), assets=[callbacks]
    ),
    max_active_runs=1,
    catchup=False,
    tags=["example", "sagemaker"],
) as dag:

    @task(inlets=[callbacks], show_return_value_in_logs=False)  # it returns tokens
    def waiting(**context: Any) -> list[dict[str, Any]]:
        """The callbacks whose steps are still open (this run's and any left by earlier runs)."""
        return pending_callbacks(context, SageMakerCallbackHook(aws_conn_id=AWS_CONN_ID), callbacks)

    @task.sagemaker_callback(aws_conn_id=AWS_CONN_ID)
    def enrich(callback: dict[str, Any]) -> dict[str, Any]:
        """The EnrichRecord step's work; the returned dict is its outputs."""
        record_id = callback["arguments"]["record_id"]
        return {"enriched_by": "airflow", "record_length": len(record_id)}

    enrich.expand(callback=waiting())
