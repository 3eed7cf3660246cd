"""
Callback tokens and the requests that close a step: masking, checks, ``ClientRequestToken``, reasons.

The token is a secret: :func:`mask_token` is the only form of it the provider prints.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from enum import StrEnum
from typing import Final, Literal

#: Longest ``FailureReason``, in characters.
MAX_FAILURE_REASON: Final = 256
#: A callback token: exactly 10 characters ``[a-zA-Z0-9]``.
TOKEN_RE: Final = re.compile(r"[a-zA-Z0-9]{10}")
_TRUNCATION_MARK: Final = " ...[truncated]"


class Outcome(StrEnum):
    """How a step is closed."""

    SUCCESS = "success"
    FAILURE = "failure"


def mask_token(token: str | None) -> str:
    """Return a form of a callback token that is safe to print: its first two characters and stars."""
    if not token:
        return "<none>"
    return f"{token[:2]}********"


def short(text: str, limit: int = 80) -> str:
    """``text``, cut to ``limit`` characters (for error messages)."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_token(token: object) -> str:
    """
    Validate a callback token before any request.

    :raises InvalidOutputParameters: never; raises :class:`ValueError` naming the defect (the
        token itself is never printed).
    """
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        shape = f"{len(token)} characters" if isinstance(token, str) else f"a {type(token).__name__}"
        raise ValueError(
            f"callback token is malformed: expected exactly 10 characters [a-zA-Z0-9], got {shape}"
        )
    return token


def truncate_failure_reason(reason: object, limit: int = MAX_FAILURE_REASON) -> str:
    """
    Cut a failure reason to ``limit`` characters, keeping the start and marking the cut.

    Never splits a character from the combining marks that follow it, and drops text that is
    not valid Unicode (lone surrogates) so the request can be encoded.
    """
    text = str(reason) if reason is not None else ""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit:
        return text
    cut = max(0, limit - len(_TRUNCATION_MARK))
    while cut > 0 and unicodedata.combining(text[cut]):
        cut -= 1
    return text[:cut].rstrip() + _TRUNCATION_MARK


def client_request_token(
    *,
    callback_token: str,
    outcome: Outcome | Literal["success", "failure"],
    dag_id: str = "",
    run_id: str = "",
    task_id: str = "",
    map_index: int = -1,
) -> str:
    """
    Derive the ``ClientRequestToken`` for closing one step one way.

    Derived from what identifies the intent (DAG id, run id, task id, map index, callback token,
    outcome), not from the try number, so a retried task repeats the same request and the
    service completes it at most once. 72 characters (the service accepts 32 to 128).
    """
    payload = json.dumps(
        [dag_id, run_id, task_id, int(map_index), callback_token, Outcome(outcome).value],
        separators=(",", ":"),
    )
    return "airflow-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_request_token(crt: str) -> str:
    """Validate a ``ClientRequestToken`` (32..128 characters)."""
    if not isinstance(crt, str) or not 32 <= len(crt) <= 128:
        raise ValueError("client_request_token must be 32 to 128 characters")
    return crt
