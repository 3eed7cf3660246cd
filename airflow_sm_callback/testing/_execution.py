"""
One pipeline execution's state: its step runs, its expressions, its status.

:class:`Execution` and :class:`StepRun` are the records the engine keeps; they know how
SageMaker shows them (``DescribePipelineExecution``, ``ListPipelineExecutions``,
``ListPipelineExecutionSteps``), how to resolve ``Get`` expressions against the execution
(parameters, execution variables, step outputs), which steps may start next and when the
execution has finished. Nothing here sends a message or starts a timer: that is
:mod:`._runner`. Not thread-safe: the engine holds its lock around every call.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

from airflow_sm_callback.protocol.expressions import OUTPUT_REF_RE, STEP_REF_RE, cast_value, resolve, to_text

from ._definition import ResolutionError, StepDef, declared_outputs

__all__ = ["FINISHED_EXECUTION_STATUSES", "OPEN_STEP_STATUSES", "Execution", "StepRun", "now"]

#: Statuses of an execution that will never change again.
FINISHED_EXECUTION_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
#: Statuses of a step that is still open (running).
OPEN_STEP_STATUSES: Final = frozenset({"Starting", "Executing", "Stopping"})


def now() -> datetime:
    """:return: the current time (UTC, aware)."""
    return datetime.now(UTC)


@dataclasses.dataclass
class StepRun:
    """One started step of an execution."""

    name: str
    type: str
    seq: int
    status: str
    start_time: datetime
    end_time: datetime | None = None
    failure_reason: str | None = None
    token: str | None = None
    queue_url: str | None = None
    arguments: dict[str, Any] | None = None
    outputs: list[dict[str, str]] = dataclasses.field(default_factory=list)
    outcome: bool | None = None
    error_message: str | None = None
    timer: threading.Timer | None = None

    def close(self, status: str, failure_reason: str | None = None) -> None:
        """End the step with ``status`` (and a reason); its timer, if any, is cancelled."""
        self.status = status
        self.end_time = now()
        if failure_reason is not None:
            self.failure_reason = failure_reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def to_api(self) -> dict[str, Any]:
        """:return: the step as ``ListPipelineExecutionSteps`` shows it."""
        item: dict[str, Any] = {
            "StepName": self.name,
            "StepDisplayName": self.name,
            "StepStatus": self.status,
            "StartTime": self.start_time,
            "AttemptCount": 1,
        }
        if self.end_time is not None:
            item["EndTime"] = self.end_time
        if self.failure_reason is not None:
            item["FailureReason"] = self.failure_reason
        metadata: dict[str, Any] = {}
        if self.type == "Callback":
            callback: dict[str, Any] = {"OutputParameters": [dict(o) for o in self.outputs]}
            if self.token is not None:
                callback["CallbackToken"] = self.token
            if self.queue_url is not None:
                callback["SqsQueueUrl"] = self.queue_url
            metadata["Callback"] = callback
        elif self.type == "Condition" and self.outcome is not None:
            metadata["Condition"] = {"Outcome": "True" if self.outcome else "False"}
        elif self.type == "Fail":
            metadata["Fail"] = {"ErrorMessage": self.error_message or ""}
        item["Metadata"] = metadata
        return item


@dataclasses.dataclass
class Execution:
    """One pipeline execution: its definition, parameters and the steps started so far."""

    arn: str
    execution_id: str
    pipeline_name: str
    pipeline_arn: str
    account_id: str
    region: str
    display_name: str
    description: str | None
    definition: dict[str, Any]
    definition_text: str
    parameters: dict[str, Any]
    parameter_list: list[dict[str, str]]
    step_defs: dict[str, StepDef]
    status: str = "Executing"
    failure_reason: str | None = None
    creation_time: datetime = dataclasses.field(default_factory=now)
    last_modified_time: datetime = dataclasses.field(default_factory=now)
    runs: dict[str, StepRun] = dataclasses.field(default_factory=dict)
    failed: bool = False
    stop_requested: bool = False

    def touch(self) -> None:
        """Mark the execution modified now."""
        self.last_modified_time = now()

    # ------------------------------------------------------------------ as the API shows it

    def describe(self) -> dict[str, Any]:
        """:return: the ``DescribePipelineExecution`` response."""
        response: dict[str, Any] = {
            "PipelineArn": self.pipeline_arn,
            "PipelineExecutionArn": self.arn,
            "PipelineExecutionDisplayName": self.display_name,
            "PipelineExecutionStatus": self.status,
            "CreationTime": self.creation_time,
            "LastModifiedTime": self.last_modified_time,
        }
        if self.description:
            response["PipelineExecutionDescription"] = self.description
        if self.failure_reason:
            response["FailureReason"] = self.failure_reason
        experiment = self.definition.get("PipelineExperimentConfig")
        if isinstance(experiment, dict):
            try:
                resolved = self.resolve(experiment)
            except ResolutionError:
                resolved = {}
            response["PipelineExperimentConfig"] = {
                k: to_text(v) for k, v in resolved.items() if k in ("ExperimentName", "TrialName")
            }
        return response

    def summary(self) -> dict[str, Any]:
        """:return: the execution as ``ListPipelineExecutions`` shows it."""
        summary: dict[str, Any] = {
            "PipelineExecutionArn": self.arn,
            "StartTime": self.creation_time,
            "PipelineExecutionStatus": self.status,
            "PipelineExecutionDisplayName": self.display_name,
        }
        if self.description:
            summary["PipelineExecutionDescription"] = self.description
        if self.failure_reason:
            summary["PipelineExecutionFailureReason"] = self.failure_reason
        return summary

    # ------------------------------------------------------------------ expressions

    def resolve(self, value: Any) -> Any:
        """
        :param value: anything from the definition; ``Get`` and ``Std:Join`` inside are resolved.
        :return: the resolved value.
        :raises ResolutionError: for an expression that cannot be resolved now.
        """
        return resolve(value, self._get_value)

    def _get_value(self, path: str) -> Any:
        if path.startswith("Parameters."):
            name = path[len("Parameters.") :]
            if name not in self.parameters:
                raise ResolutionError(f"parameter {name!r} is not defined")
            return self.parameters[name]
        if path.startswith("Execution."):
            attribute = path[len("Execution.") :]
            values: dict[str, str] = {
                "PipelineExecutionId": self.execution_id,
                "PipelineExecutionArn": self.arn,
                "PipelineName": self.pipeline_name,
                "PipelineExecutionDisplayName": self.display_name,
                "CurrentDateTime": now().isoformat(),
            }
            if attribute not in values:
                raise ResolutionError(f"unknown execution variable {path!r}")
            return values[attribute]
        match = OUTPUT_REF_RE.fullmatch(path)
        if match:
            return self._output_value(path, match.group(1), match.group(3))
        if STEP_REF_RE.match(path):
            return f"<{path}>"
        raise ResolutionError(f"unsupported expression {path!r}")

    def _output_value(self, path: str, step_name: str, output_name: str) -> Any:
        run = self.runs.get(step_name)
        if run is None or run.status != "Succeeded":
            raise ResolutionError(f"step {step_name} has not succeeded, cannot read {path}")
        if run.type != "Callback":
            return f"<{path}>"
        declared = declared_outputs(self.step_defs[step_name])
        for output in run.outputs:
            if output["Name"] == output_name:
                type_name = declared.get(output_name, "String")
                try:
                    return cast_value(output["Value"], type_name)
                except ValueError:
                    raise ResolutionError(
                        f"output {output_name!r} of step {step_name} has value "
                        f"{output['Value']!r}, which is not a valid {type_name}"
                    ) from None
        raise ResolutionError(f"step {step_name} did not set output {output_name!r}")

    # ------------------------------------------------------------------ progress

    def _is_active(self, step: StepDef) -> bool:
        """Whether every condition branch the step sits in was taken."""
        while step.parent is not None:
            condition_name, branch = step.parent
            run = self.runs.get(condition_name)
            if run is None or run.status != "Succeeded" or run.outcome is not branch:
                return False
            step = self.step_defs[condition_name]
        return True

    def startable(self) -> Iterator[StepDef]:
        """The steps not started yet whose branch is taken and whose dependencies succeeded."""
        for step in sorted(self.step_defs.values(), key=lambda s: s.order):
            if step.name in self.runs or not self._is_active(step):
                continue
            deps = [self.runs.get(d) for d in step.depends_on]
            if all(run is not None and run.status == "Succeeded" for run in deps):
                yield step

    def fail(self, reason: str) -> None:
        """Mark the execution failing with ``reason`` (the first failure's reason stays)."""
        if not self.failed and not self.stop_requested:
            self.failed = True
            self.failure_reason = reason

    def settle(self) -> None:
        """Once no step is open: ``Stopped``, ``Failed`` or, with nothing left to start, ``Succeeded``."""
        if self.status in FINISHED_EXECUTION_STATUSES:
            return
        if any(run.status in OPEN_STEP_STATUSES for run in self.runs.values()):
            return
        if self.stop_requested:
            self.status = "Stopped"
        elif self.failed:
            self.status = "Failed"
        elif next(self.startable(), None) is None:
            self.status = "Succeeded"
        else:
            return
        self.touch()
