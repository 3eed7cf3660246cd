"""Callback steps as ``ListPipelineExecutionSteps`` shows them, and what a pipeline definition declares."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from airflow_sm_callback.protocol.expressions import walk_steps
from airflow_sm_callback.protocol.outputs import OutputType
from airflow_sm_callback.protocol.tokens import short

#: Step statuses of a step that is still waiting to be closed.
OPEN_STEP_STATUSES: Final = frozenset({"Starting", "Executing", "Stopping"})
#: Step statuses of a step that is closed for good.
CLOSED_STEP_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
#: Execution statuses of an execution that has ended.
ENDED_EXECUTION_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})


@dataclass(frozen=True, slots=True)
class CallbackStep:
    """
    A callback step of an execution, as ``ListPipelineExecutionSteps`` shows it.

    :param name: the step's ``Name`` in the pipeline definition.
    :param status: ``StepStatus`` (``Starting|Executing|Stopping|Stopped|Failed|Succeeded``).
    :param token: the step's callback token (``Metadata.Callback.CallbackToken``), when it has one.
    """

    name: str
    status: str
    token: str | None = field(default=None, repr=False)
    queue_url: str | None = None
    output_parameters: dict[str, str] = field(default_factory=dict)
    failure_reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """Whether the step still waits to be closed."""
        return self.status in OPEN_STEP_STATUSES

    @property
    def is_closed(self) -> bool:
        """Whether the step was closed (succeeded, failed or stopped)."""
        return self.status in CLOSED_STEP_STATUSES

    @classmethod
    def from_api(cls, step: Mapping[str, Any]) -> CallbackStep | None:
        """Build from one ``PipelineExecutionSteps`` item; ``None`` when it is not a callback step."""
        callback = (step.get("Metadata") or {}).get("Callback")
        if callback is None:
            return None
        return cls(
            name=step.get("StepName", ""),
            status=step.get("StepStatus", ""),
            token=callback.get("CallbackToken"),
            queue_url=callback.get("SqsQueueUrl"),
            output_parameters={p["Name"]: p.get("Value", "") for p in callback.get("OutputParameters") or []},
            failure_reason=step.get("FailureReason"),
            started_at=step.get("StartTime"),
            ended_at=step.get("EndTime"),
        )


def callback_steps_in_definition(definition: Mapping[str, Any] | str) -> dict[str, dict[str, OutputType]]:
    """
    Every callback step of a pipeline definition (condition branches included) with its declared outputs.

    :return: ``{step name: {output name: OutputType}}``.
    :raises ValueError: if the definition is not JSON or declares an unknown ``OutputType``.
    """
    if isinstance(definition, str):
        try:
            definition = json.loads(definition)
        except ValueError as err:
            raise ValueError(f"pipeline definition is not JSON ({short(str(err))})") from None
    if not isinstance(definition, Mapping):
        raise ValueError("pipeline definition is not a JSON object")
    found: dict[str, dict[str, OutputType]] = {}
    for step in walk_steps(definition.get("Steps")):
        if step.get("Type") != "Callback":
            continue
        outputs: dict[str, OutputType] = {}
        for output in step.get("OutputParameters") or []:
            name, kind = output.get("OutputName"), output.get("OutputType", "String")
            try:
                outputs[name] = OutputType(kind)
            except ValueError:
                raise ValueError(
                    f"callback step {step.get('Name')!r} output {name!r} has unknown type {kind!r}"
                ) from None
        found[step.get("Name", "")] = outputs
    return found


class CallbackStepError(RuntimeError):
    """A callback step could not be closed (or looked up) the way it was asked."""


class AmbiguousCallbackStep(CallbackStepError):
    """Several callback steps of one execution are open; say which one with its step name."""


def select_callback_step(
    steps: Sequence[CallbackStep],
    *,
    execution_arn: str,
    step_name: str | None = None,
    token: str | None = None,
) -> CallbackStep | None:
    """
    Pick one callback step from ``steps`` (newest first): by token, by name, or the one open step
    (else the newest).

    :raises AmbiguousCallbackStep: without ``step_name`` or ``token`` when several are open.
    """
    if token is not None:
        return next((s for s in steps if s.token == token), None)
    if step_name is not None:
        return next((s for s in steps if s.name == step_name), None)
    open_steps = [s for s in steps if s.is_open]
    if len(open_steps) > 1:
        names = ", ".join(sorted({s.name for s in open_steps}))
        raise AmbiguousCallbackStep(
            f"execution {execution_arn} has several open callback steps ({names}); "
            "say which one with callback_step_name"
        )
    if open_steps:
        return open_steps[0]
    return steps[0] if steps else None


def pick_output_types(
    steps: Mapping[str, dict[str, OutputType]], execution_arn: str, step_name: str | None
) -> dict[str, OutputType]:
    """The declared outputs of ``step_name`` (or of the only callback step) in a definition."""
    if step_name is None:
        if len(steps) != 1:
            names = ", ".join(sorted(steps)) or "none"
            raise CallbackStepError(
                f"the pipeline of {execution_arn} has {len(steps)} callback steps ({names}); "
                "say which one with its step name"
            )
        return dict(next(iter(steps.values())))
    if step_name not in steps:
        names = ", ".join(sorted(steps)) or "none"
        raise CallbackStepError(
            f"{step_name!r} is not a callback step of the pipeline of {execution_arn} (callback steps: {names})"
        )
    return dict(steps[step_name])


@dataclass(frozen=True, slots=True)
class StepState:
    """What ``ListPipelineExecutionSteps`` last said of the step that owns a token."""

    name: str
    status: str
    checked_at: float

    @property
    def closed(self) -> bool:
        """Whether the step is closed for good (a message for it is stale)."""
        return self.status in CLOSED_STEP_STATUSES


class StepDirectory:
    """
    Maps callback tokens to their steps, from ``ListPipelineExecutionSteps`` (one listing per
    execution serves every token in it).

    A closed step stays closed, so that answer is kept; an open one is re-checked after ``ttl``
    seconds. Bounded to ``max_entries`` tokens. It answers the step questions of the routing
    policy (:class:`~airflow_sm_callback.protocol.routing.StepKnowledge`).
    """

    def __init__(self, ttl: float = 30.0, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self._states: OrderedDict[str, StepState] = OrderedDict()
        self._max = max_entries

    def get(self, token: str) -> StepState | None:
        """The last known state of the step that owns ``token``."""
        return self._states.get(token)

    def is_fresh(self, token: str) -> bool:
        """Whether the known state is good enough without a new look-up."""
        state = self._states.get(token)
        return state is not None and (state.closed or time.monotonic() - state.checked_at < self.ttl)

    def record(self, steps: Iterable[CallbackStep]) -> None:
        """Remember the steps of one listing."""
        now = time.monotonic()
        for step in steps:
            if step.token:
                self._states[step.token] = StepState(step.name, step.status, now)
                self._states.move_to_end(step.token)
        while len(self._states) > self._max:
            self._states.popitem(last=False)

    # The routing policy's questions.

    def step_closed(self, token: str) -> bool:
        state = self._states.get(token)
        return state is not None and state.closed

    def step_fresh(self, token: str) -> bool:
        return self.is_fresh(token)

    def step_known(self, token: str) -> bool:
        return token in self._states

    def step_name(self, token: str) -> str | None:
        state = self._states.get(token)
        return state.name if state else None
