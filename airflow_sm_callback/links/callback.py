"""Extra link from a task that closed a callback step to its pipeline execution in the SageMaker console."""

from __future__ import annotations

from typing import ClassVar

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink


class SageMakerPipelineExecutionLink(BaseAwsLink):
    """The pipeline execution, in the SageMaker console."""

    name: ClassVar[str] = "SageMaker Pipeline Execution"
    key: ClassVar[str] = "sagemaker_pipeline_execution"
    format_str: ClassVar[str] = (
        BASE_AWS_CONSOLE_LINK
        + "/sagemaker/home?region={region_name}#/pipelines/{pipeline_name}/executions/{execution_id}"
    )
