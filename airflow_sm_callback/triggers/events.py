"""The payloads of the events a SageMakerCallbackTrigger fires: success, timeout and error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_sm_callback.protocol.message import CallbackMessage

__all__ = ["error_event", "success_event", "timeout_event"]


def success_event(
    callback: CallbackMessage,
    queue_url: str,
    receipt_handles: Sequence[str] | None,
    deleted_by: str | None = "task",
) -> dict[str, Any]:
    """
    The payload of the event a trigger fires for a callback.

    For a task's trigger, ``receipt_handles`` are the callback's messages, hidden until they are
    deleted once the callback is in the task's XCom, and ``deleted_by`` says by whom: ``"task"``
    (the task, right after its XCom push) or ``"triggerer"`` (the shared stream, once the task
    instance succeeded; the task deletes them only if it does not take the callback, its step
    being closed already). For an ``AssetWatcher`` on the shared stream both are ``None``: the
    producer deletes the messages once the asset event is persisted.
    """
    return {
        "status": "success",
        "callback": callback.to_dict(),
        "queue_url": queue_url,
        "receipt_handles": list(receipt_handles) if receipt_handles is not None else None,
        "deleted_by": deleted_by if receipt_handles is not None else None,
    }


def timeout_event(deadline: float | None) -> dict[str, Any]:
    """The payload of the event a single-event trigger fires when its deadline passed."""
    return {"status": "timeout", "deadline": deadline}


def error_event(message: str) -> dict[str, Any]:
    """The payload of the event a trigger fires when it cannot wait any longer."""
    return {"status": "error", "message": message}
