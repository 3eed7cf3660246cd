"""Extra link from a task that closed a callback step to its pipeline execution in the SageMaker console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

from airflow_sm_callback.protocol.message import parse_execution_arn

if TYPE_CHECKING:
    from airflow.sdk import Context


class SageMakerPipelineExecutionLink(BaseAwsLink):
    """The pipeline execution, in the SageMaker console."""

    name: ClassVar[str] = "SageMaker Pipeline Execution"
    key: ClassVar[str] = "sagemaker_pipeline_execution"
    format_str: ClassVar[str] = (
        BASE_AWS_CONSOLE_LINK
        + "/sagemaker/home?region={region_name}#/pipelines/{pipeline_name}/executions/{execution_id}"
    )


def _link_fields(execution_arn: str) -> dict[str, Any]:
    region, _, pipeline, execution_id = parse_execution_arn(execution_arn)
    return {
        "region_name": region,
        "aws_partition": execution_arn.split(":")[1],
        "pipeline_name": pipeline,
        "execution_id": execution_id,
    }


def execution_console_url(execution_arn: str) -> str:
    """The execution's page in the SageMaker console (what the task's extra link opens)."""
    fields = _link_fields(execution_arn)
    domain = SageMakerPipelineExecutionLink.get_aws_domain(fields["aws_partition"])
    return SageMakerPipelineExecutionLink().format_link(aws_domain=domain, **fields)


def persist_execution_link(context: Context, operator: Any, execution_arn: str | None) -> None:
    """Keep the execution of ``execution_arn`` as the task's console link (nothing without one)."""
    if execution_arn:
        SageMakerPipelineExecutionLink.persist(
            context=context, operator=operator, **_link_fields(execution_arn)
        )
