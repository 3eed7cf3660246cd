"""What the sensor, the operators and the decorator share: AWS parameters, token masking, task identity."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_sm_callback.callback import (
    TOKEN_RE,
    CallbackMessage,
    Outcome,
    check_token,
    client_request_token,
    register_token,
)

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

#: Reason sent when a callback arrives with its execution already stopping.
STOPPED_BEFORE_WORK = (
    "The pipeline execution is stopping (StopPipelineExecution); Airflow closed this callback step "
    "without starting its work."
)

#: Template fields every class here has, as in the amazon provider.
AWS_TEMPLATE_FIELDS: tuple[str, ...] = ("aws_conn_id", "region_name", "verify")


_TOKEN_IN_TEXT = re.compile(
    r"""["']?(?:callback_?)?token["']?\s*[:=]\s*["']([a-zA-Z0-9]{10})["']""", re.IGNORECASE
)


def mask_tokens_in(value: Any, *, _depth: int = 0) -> None:
    """
    Register every callback token found in ``value`` with the secrets masker.

    Finds tokens as the ``token`` of callback dicts (the sensor's XCom), in keys named like a
    token, in lists and dicts of those, and in text that renders such a dict (a Jinja template
    of the XCom renders to its text), so rendered template fields never show them.
    """
    if _depth > 8:
        return
    if isinstance(value, str):
        for token in _TOKEN_IN_TEXT.findall(value):
            register_token(token)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if (
                isinstance(key, str)
                and key.lower() in {"token", "callback_token", "callbacktoken"}
                and isinstance(item, str)
                and TOKEN_RE.fullmatch(item)
            ):
                register_token(item)
            else:
                mask_tokens_in(item, _depth=_depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            mask_tokens_in(item, _depth=_depth + 1)


class CallbackAwsMixin:
    """
    AWS connection parameters (as in the amazon provider) and a lazily built
    :class:`~airflow_sm_callback.hooks.callback.SageMakerCallbackHook`.

    Rendered template fields are scanned for callback tokens, which are registered with the
    secrets masker before Airflow stores or shows the rendered values.
    """

    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    botocore_config: dict[str, Any] | None
    template_fields: Any

    def _init_aws(
        self,
        aws_conn_id: str | None,
        region_name: str | None,
        verify: bool | str | None,
        botocore_config: dict[str, Any] | None,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    @cached_property
    def hook(self) -> SageMakerCallbackHook:
        """
        The hook on this task's connection (built on first use, never in ``__init__``).

        Imported here, not with the module: boto3 and the amazon provider take about a second to
        import, which a DAG file's parse and a resumed sensor that makes no AWS request skip.
        """
        from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

        return SageMakerCallbackHook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]
        for name in self.template_fields:
            mask_tokens_in({name: getattr(self, name, None)})


def rendered_optional(value: Any) -> Any:
    """
    A rendered template field that may be unset: ``None``, ``""`` and the text ``"None"`` (what
    Jinja renders for ``None`` unless the DAG renders natively) all mean unset.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    return value


def rendered_mapping(value: Any, name: str) -> dict[str, Any]:
    """
    A rendered template field that must be a mapping; Jinja renders a dict to its text (JSON or
    Python literal), which is parsed back.

    :raises ValueError: naming the field when it is not a mapping.
    """
    value = rendered_optional(value)
    if value is None:
        return {}
    if isinstance(value, str):
        import ast
        import json

        text = value.strip()
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise ValueError(f"{name} must be a dict, got the text {text[:80]!r}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    return dict(value)


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


def callback_from(value: Any) -> CallbackMessage:
    """
    A callback from what a user passes: the sensor's XCom dict (or its rendered text), a trigger
    event payload, an asset event's extra (``{"payload": {"callback": ...}}``), or a
    :class:`CallbackMessage`.

    :raises ValueError: naming what is wrong.
    """
    if isinstance(value, CallbackMessage):
        return value
    if isinstance(value, str):
        value = rendered_mapping(value, "callback")
    if isinstance(value, Mapping) and isinstance(value.get("payload"), Mapping):
        value = value["payload"]
    if isinstance(value, Mapping) and isinstance(value.get("callback"), Mapping):
        value = value["callback"]
    if not isinstance(value, Mapping):
        raise ValueError(f"expected the callback dict the sensor pushes to XCom, got {type(value).__name__}")
    return CallbackMessage.from_dict(value)


def callbacks_in_asset_events(events: Any) -> list[dict[str, Any]]:
    """
    The callbacks carried by triggering asset events (``context["triggering_asset_events"]``).

    Tokens are registered with the secrets masker (a task that returns them logs its result).
    """
    found: list[dict[str, Any]] = []
    for asset in events or {}:
        found.extend(_callbacks_of(events[asset]))
    return found


def _callbacks_of(events: Any) -> list[dict[str, Any]]:
    found = []
    for event in events:
        try:
            callback = callback_from(getattr(event, "extra", None) or {})
        except ValueError:
            continue
        register_token(callback.token)
        found.append(callback.to_dict())
    return found


def pending_callbacks(
    context: Context, hook: SageMakerCallbackHook, asset: Any = None, *, look_back: int = 200
) -> list[dict[str, Any]]:
    """
    The callbacks a run started by an ``AssetWatcher`` (or a periodic sweep) should handle.

    Airflow starts one asset-triggered run for the events queued until its scheduler loop picks
    them up, but consumes only the events recorded up to the first one's queue time: a callback
    recorded a moment later waits for the *next* run. So this takes the run's triggering events
    and, when ``asset`` is given (it must be one of the task's ``inlets``), the last
    ``look_back`` events of that asset, and keeps every callback whose step is still open
    (one ``ListPipelineExecutionSteps`` per execution). Run the DAG with ``max_active_runs=1`` so
    two runs never handle the same callback.
    """
    candidates = callbacks_in_asset_events(context.get("triggering_asset_events"))
    if asset is not None:
        candidates.extend(_callbacks_of(context["inlet_events"][asset].ascending(False).limit(look_back)))
    unique: dict[str, dict[str, Any]] = {}
    for callback in candidates:
        unique.setdefault(callback["token"], callback)
    steps: dict[str, dict[str, Any]] = {}
    pending = []
    for token, callback in unique.items():
        arn = callback["pipeline_execution_arn"]
        if arn not in steps:
            try:
                steps[arn] = {s.token: s for s in hook.list_callback_steps(arn) if s.token}
            except Exception:  # cannot tell: handle it (closing twice is harmless)
                steps[arn] = {}
        step = steps[arn].get(token)
        if step is None or step.is_open:
            pending.append(callback)
    return pending


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
