"""Which callback a waiter wants: :class:`CallbackMatcher` and JSON-aware argument equality."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_sm_callback.protocol.message import CallbackMessage, parse_execution_arn
from airflow_sm_callback.protocol.outputs import encode_scalar


def _argument_equals(expected: Any, actual: Any) -> bool:
    """
    JSON-aware equality: booleans are not numbers, ``1 == 1.0``, and a *string* expected value
    matches a scalar by its protocol encoding (templated values render to text).
    """
    if isinstance(expected, bool) or isinstance(actual, bool):
        if isinstance(expected, str) and isinstance(actual, bool):
            return expected.lower() == encode_scalar(actual)
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, str) and isinstance(actual, int | float) and not isinstance(actual, bool):
        try:
            return expected == encode_scalar(actual) or float(expected) == float(actual)
        except (ValueError, OverflowError):
            return False
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return expected.keys() == actual.keys() and all(
            _argument_equals(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(
            _argument_equals(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return type(expected) is type(actual) and expected == actual


@dataclass(frozen=True, slots=True)
class CallbackMatcher:
    """
    Says whether a callback is the one a waiter wants.

    Every criterion given must hold. JSON-serializable through :meth:`to_dict`, so triggers
    can carry it.

    :param pipeline_execution_arn: the execution the callback must belong to.
    :param pipeline_name: the pipeline the callback must belong to.
    :param step_name: the callback step's ``Name`` in the pipeline definition. A message carries
        no step name: it is mapped from the token with ``ListPipelineExecutionSteps``.
    :param arguments: argument values that must be equal in the callback's ``arguments``.
    """

    pipeline_execution_arn: str | None = None
    pipeline_name: str | None = None
    step_name: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.pipeline_execution_arn or self.pipeline_name or self.step_name or self.arguments):
            raise ValueError(
                "say which callback to wait for: a pipeline execution ARN, a pipeline name, "
                "a callback step name or argument values"
            )
        if self.pipeline_execution_arn is not None:
            _, _, pipeline, _ = parse_execution_arn(self.pipeline_execution_arn)
            if self.pipeline_name is not None and pipeline.lower() != self.pipeline_name.lower():
                raise ValueError(
                    f"pipeline_execution_arn belongs to pipeline {pipeline!r}, "
                    f"not to pipeline_name {self.pipeline_name!r}: no callback can match both"
                )
        if not isinstance(self.arguments, Mapping):
            raise ValueError(f"arguments must be a mapping, got {type(self.arguments).__name__}")
        if self.step_name is not None and not self.pipeline_execution_arn and not self.pipeline_name:
            # Allowed, but every candidate message then costs a step look-up.
            pass

    @property
    def needs_step_name(self) -> bool:
        """Whether matching needs the callback's step name (a ``ListPipelineExecutionSteps`` look-up)."""
        return self.step_name is not None

    def matches_message(self, callback: CallbackMessage) -> bool:
        """Whether the callback matches every criterion that does not need its step name."""
        if (
            self.pipeline_execution_arn is not None
            and callback.pipeline_execution_arn != self.pipeline_execution_arn
        ):
            return False
        # SageMaker lower-cases the pipeline name in execution ARNs.
        if self.pipeline_name is not None and callback.pipeline_name.lower() != self.pipeline_name.lower():
            return False
        for name, expected in self.arguments.items():
            if name not in callback.arguments or not _argument_equals(expected, callback.arguments[name]):
                return False
        return True

    def matches(self, callback: CallbackMessage, step_name: str | None = None) -> bool:
        """
        Whether the callback is the one wanted.

        :param step_name: the callback's step name, when :attr:`needs_step_name`; defaults to
            ``callback.step_name``.
        """
        if not self.matches_message(callback):
            return False
        if self.step_name is not None:
            return (step_name or callback.step_name) == self.step_name
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (``from_dict`` inverts it)."""
        return {
            "pipeline_execution_arn": self.pipeline_execution_arn,
            "pipeline_name": self.pipeline_name,
            "step_name": self.step_name,
            "arguments": dict(self.arguments),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallbackMatcher:
        """Rebuild a matcher from :meth:`to_dict` output."""
        return cls(
            pipeline_execution_arn=data.get("pipeline_execution_arn") or None,
            pipeline_name=data.get("pipeline_name") or None,
            step_name=data.get("step_name") or None,
            arguments=dict(data.get("arguments") or {}),
        )

    def describe(self) -> str:
        """A short human description, for logs and errors."""
        parts = []
        if self.pipeline_execution_arn:
            parts.append(f"execution {self.pipeline_execution_arn}")
        if self.pipeline_name:
            parts.append(f"pipeline {self.pipeline_name}")
        if self.step_name:
            parts.append(f"step {self.step_name}")
        if self.arguments:
            parts.append(f"arguments {json.dumps(dict(self.arguments), sort_keys=True, default=str)}")
        return ", ".join(parts)
