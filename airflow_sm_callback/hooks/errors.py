"""How AWS errors are told apart: worth waiting out (throttling, 5xx, connection trouble) or not."""

from __future__ import annotations

import asyncio
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["TRANSIENT_CODES", "describe_error", "is_transient"]

TRANSIENT_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
    }
)


def is_transient(err: BaseException) -> bool:
    """Whether an AWS error is worth waiting out (throttling, 5xx, connection trouble)."""
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500
    return isinstance(err, BotoCoreError | OSError | asyncio.TimeoutError)


def describe_error(err: BaseException) -> str:
    """A one-line description of an AWS error."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    return f"{type(err).__name__}: {err}"
