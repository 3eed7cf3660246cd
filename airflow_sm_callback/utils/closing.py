"""Which step a task closes, the request token it closes it with, and whether Airflow will retry it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_sm_callback.protocol.tokens import Outcome, check_token, client_request_token
from airflow_sm_callback.utils.rendering import callback_from, rendered_optional

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

__all__ = [
    "STOPPED_BEFORE_WORK",
    "StepTarget",
    "request_token_for",
    "resolve_target",
    "task_identity",
    "will_retry",
]

#: Reason sent when a callback arrives with its execution already stopping.
STOPPED_BEFORE_WORK = (
    "The pipeline execution is stopping (StopPipelineExecution); Airflow closed this callback step "
    "without starting its work."
)


def task_identity(context: Context) -> dict[str, Any]:
    """DAG id, run id, task id and map index of the running task (for request tokens)."""
    ti = context["ti"]
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1,
    }


def request_token_for(context: Context, token: str, outcome: Outcome) -> str:
    """The ``ClientRequestToken`` for this task closing ``token`` one way (the same on every try)."""
    return client_request_token(callback_token=token, outcome=outcome, **task_identity(context))


@dataclass(frozen=True)
class StepTarget:
    """The callback step a task closes: its token, and its execution and step name when known."""

    token: str
    execution_arn: str | None = None
    step_name: str | None = None


def resolve_target(
    hook: SageMakerCallbackHook,
    *,
    callback: Any = None,
    token: Any = None,
    execution_arn: Any = None,
    step_name: Any = None,
) -> StepTarget | None:
    """
    Which step to close, from (in this order) a callback dict, a token, or an execution ARN and a
    callback step name (the token looked up with ``ListPipelineExecutionSteps``).

    :return: the target, or ``None`` when the execution's callback step has not started.
    :raises ValueError: when nothing says which step, naming the parameters.
    """
    callback, token = rendered_optional(callback), rendered_optional(token)
    execution_arn, step_name = rendered_optional(execution_arn), rendered_optional(step_name)
    if callback is not None:
        parsed = callback_from(callback)
        hook.mask(parsed.token)
        return StepTarget(parsed.token, parsed.pipeline_execution_arn, parsed.step_name or step_name)
    if token is not None:
        check_token(token)
        hook.mask(token)
        return StepTarget(token, execution_arn, step_name)
    if execution_arn is not None:
        step = hook.find_callback_step(execution_arn, step_name)
        if step is None or not step.token:
            return None
        return StepTarget(step.token, execution_arn, step.name)
    raise ValueError(
        "say which callback step to close: callback (the sensor's XCom), callback_token, "
        "or pipeline_execution_arn with callback_step_name"
    )


def will_retry(context: Context) -> bool:
    """Whether Airflow will retry the running task if it fails now (as Airflow itself decides)."""
    ti = context["ti"]
    task = context.get("task") or getattr(ti, "task", None)
    retries = getattr(task, "retries", 0) or 0
    return bool(retries) and (ti.try_number or 1) <= (getattr(ti, "max_tries", 0) or 0)
