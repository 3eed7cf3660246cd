"""Finding callback tokens in what a task renders or returns, and registering them with the secrets masker."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_sm_callback import _airflow
from airflow_sm_callback.protocol.tokens import TOKEN_RE

__all__ = ["mask_tokens_in"]

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
            _airflow.mask_secret(token)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if (
                isinstance(key, str)
                and key.lower() in {"token", "callback_token", "callbacktoken"}
                and isinstance(item, str)
                and TOKEN_RE.fullmatch(item)
            ):
                _airflow.mask_secret(item)
            else:
                mask_tokens_in(item, _depth=_depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            mask_tokens_in(item, _depth=_depth + 1)
