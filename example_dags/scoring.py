"""The work the example DAGs do for a callback step: score a CSV on S3 and compute its AUC."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook


def auc(labels: list[int], scores: list[float]) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count half)."""
    ranked = sorted(zip(scores, labels, strict=True))
    rank_sum, positives, i = 0.0, 0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks are 1-based
        tied_positives = sum(label for _, label in ranked[i:j])
        rank_sum += average_rank * tied_positives
        positives += tied_positives
        i = j
    negatives = len(ranked) - positives
    if not positives or not negatives:
        raise ValueError("the scored data needs both positive and negative labels")
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def score_csv(callback: dict[str, Any], aws_conn_id: str = "aws_default") -> dict[str, Any]:
    """
    Score the CSV (``id,label,score``) a callback's ``input_uri`` argument names, write a report
    next to it, and return the ``ScoreInWarehouse`` step's outputs.
    """
    arguments = callback["arguments"]
    s3 = S3Hook(aws_conn_id=aws_conn_id)
    bucket, key = S3Hook.parse_s3_url(arguments["input_uri"])
    rows = list(csv.DictReader(io.StringIO(s3.read_key(key, bucket))))
    value = auc([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
    report_key = f"reports/{callback['execution_id']}.json"
    report = {"rows": len(rows), "auc": value, "threshold": arguments["threshold"]}
    s3.load_string(json.dumps(report), report_key, bucket, replace=True)
    return {
        "rows_scored": len(rows),
        "auc": round(value, 4),
        "passed": value >= float(arguments["threshold"]),
        "report_uri": f"s3://{bucket}/{report_key}",
    }
