"""Reading rendered template fields: unset values, dicts rendered to text, and the callback dict."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

from airflow_sm_callback.protocol.message import CallbackMessage

__all__ = ["callback_from", "rendered_mapping", "rendered_optional"]


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
