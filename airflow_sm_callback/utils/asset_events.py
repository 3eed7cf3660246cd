"""Callbacks in event-driven DAGs: the callbacks of a run's asset events, and those still to handle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_sm_callback import _airflow
from airflow_sm_callback.utils.rendering import callback_from

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

__all__ = ["callbacks_in_asset_events", "pending_callbacks"]


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
        _airflow.mask_secret(callback.token)
        found.append(callback.to_dict())
    return found


def _latest(events: Any, count: int) -> Any:
    """The newest ``count`` events of an asset: a query from Airflow 3.1, the whole list (oldest first) in 3.0."""
    if hasattr(events, "ascending"):
        return events.ascending(False).limit(count)
    return list(events)[-count:][::-1]


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
        candidates.extend(_callbacks_of(_latest(context["inlet_events"][asset], look_back)))
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
