"""
Create (or update) what the example DAGs need: the callback queue and the pipeline.

Works against a real account (default credentials, or ``--profile``) and against the local
emulator (``--endpoint-url`` as printed by ``python -m airflow_sm_callback.testing``)::

    python scripts/create_callback_pipeline.py \\
        --pipeline-name sagemaker-callback-example \\
        --definition example_dags/pipelines/sdk-callback-with-condition.json \\
        --queue-name sagemaker-callbacks \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerPipelineRole \\
        --sample-data s3://my-bucket/scoring/input.csv

The queue gets a dead-letter queue with ``maxReceiveCount`` 1000, the setting that is safe for a
queue many waiters share (see the README). Prints a JSON object with the queue URL and the
pipeline ARN.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "example_dags" / "data" / "scores.csv"
DEFAULT_ROLE = "arn:aws:iam::123456789012:role/SageMakerPipelineExecutionRole"


def create(
    *,
    pipeline_name: str,
    definition: Path,
    queue_name: str,
    role_arn: str = DEFAULT_ROLE,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    sample_data: str | None = None,
    max_receive_count: int = 1000,
) -> dict[str, Any]:
    """Create or update the queue (with its dead-letter queue), the pipeline and the sample data."""
    session = boto3.session.Session(profile_name=profile, region_name=region)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url)

    sqs = client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"{queue_name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"RedrivePolicy": redrive})

    sagemaker = client("sagemaker")
    body = definition.read_text()
    json.loads(body)  # fail early, naming the file, if it is not JSON
    try:
        pipeline_arn = sagemaker.create_pipeline(
            PipelineName=pipeline_name, PipelineDefinition=body, RoleArn=role_arn
        )["PipelineArn"]
    except ClientError as err:
        error = err.response.get("Error", {})
        exists = error.get("Code") in {"ResourceInUse", "ConflictException"} or "already exists" in error.get(
            "Message", ""
        )
        if not exists:
            raise
        pipeline_arn = sagemaker.update_pipeline(
            PipelineName=pipeline_name, PipelineDefinition=body, RoleArn=role_arn
        )["PipelineArn"]

    if sample_data:
        parsed = urlparse(sample_data)
        s3 = client("s3")
        try:
            if session.region_name and session.region_name != "us-east-1":
                s3.create_bucket(
                    Bucket=parsed.netloc,
                    CreateBucketConfiguration={"LocationConstraint": session.region_name},
                )
            else:
                s3.create_bucket(Bucket=parsed.netloc)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise
        s3.put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=SAMPLE_DATA.read_bytes())

    return {"queue_url": queue_url, "dead_letter_queue_url": dlq_url, "pipeline_arn": pipeline_arn}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline-name", required=True)
    parser.add_argument("--definition", type=Path, required=True, help="pipeline definition JSON file")
    parser.add_argument("--queue-name", required=True)
    parser.add_argument(
        "--role-arn", default=DEFAULT_ROLE, help="the pipeline's execution role (required for a real account)"
    )
    parser.add_argument("--region")
    parser.add_argument("--endpoint-url", help="the emulator's endpoint; omit for a real account")
    parser.add_argument("--profile")
    parser.add_argument("--sample-data", help="s3://bucket/key to upload the example CSV to")
    parser.add_argument("--max-receive-count", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.endpoint_url is None and args.role_arn == DEFAULT_ROLE:
        parser.error("--role-arn is required for a real account: the pipeline's execution role")
    created = create(
        pipeline_name=args.pipeline_name,
        definition=args.definition,
        queue_name=args.queue_name,
        role_arn=args.role_arn,
        region=args.region,
        endpoint_url=args.endpoint_url,
        profile=args.profile,
        sample_data=args.sample_data,
        max_receive_count=args.max_receive_count,
    )
    print(json.dumps(created, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
