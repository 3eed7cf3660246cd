"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_sm_callback import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow: its hooks, sensors, operators, triggers and decorators."""
    return {
        "package-name": "airflow-sm-callback",
        "name": "SageMaker Pipelines callback steps",
        "description": "Wait for Amazon SageMaker Pipelines callback steps and close them from Airflow DAGs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Amazon SageMaker Pipelines callback steps",
                "external-doc-url": "https://docs.aws.amazon.com/sagemaker/latest/dg/build-and-manage-steps-types.html#step-type-callback",
                "tags": ["aws"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Amazon SageMaker Pipelines callback steps",
                "python-modules": ["airflow_sm_callback.hooks.callback"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Amazon SageMaker Pipelines callback steps",
                "python-modules": ["airflow_sm_callback.sensors.callback"],
            }
        ],
        "operators": [
            {
                "integration-name": "Amazon SageMaker Pipelines callback steps",
                # The approval operator needs Airflow 3.1+ (human-in-the-loop tasks).
                "python-modules": [
                    "airflow_sm_callback.operators.callback",
                    "airflow_sm_callback.operators.approval",
                ],
            }
        ],
        "notifications": ["airflow_sm_callback.notifications.callback.SageMakerCallbackFailureNotifier"],
        "extra-links": ["airflow_sm_callback.links.callback.SageMakerPipelineExecutionLink"],
        "task-decorators": [
            {
                "name": "sagemaker_callback",
                "class-name": "airflow_sm_callback.decorators.callback.sagemaker_callback_task",
            }
        ],
        "config": {
            "sagemaker_callback": {
                "description": "Settings of the SageMaker Pipelines callback-step provider.",
                "options": {
                    "resume_hold": {
                        "description": (
                            "Seconds after a SageMakerCallbackSensor defers before its trigger may "
                            "resume it (a callback that arrives sooner is claimed at once and held). "
                            "It keeps Airflow's scheduler from failing a task that resumes before "
                            "the scheduler has seen the deferring process end. Unset: the default "
                            "measured for the installed Airflow version and executor. A sensor's "
                            "resume_hold argument overrides it."
                        ),
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "20",
                        "default": None,
                    },
                },
            },
        },
        "triggers": [
            {
                "integration-name": "Amazon SageMaker Pipelines callback steps",
                "python-modules": [
                    "airflow_sm_callback.triggers.callback",
                    "airflow_sm_callback.triggers.approval",
                ],
            }
        ],
    }
