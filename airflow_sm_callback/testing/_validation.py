"""
Request checks for the step engine: field constraints, idempotency tokens and page tokens.

Every check raises :class:`~._settings.EngineError` with ``ValidationException`` and a message
naming the field the way the service does (``Value at 'callbackToken' failed to satisfy
constraint: ...``). :class:`IdempotencyCache` replays the first answer to a repeated
``ClientRequestToken``; :func:`paginate` cuts a listing into pages whose ``NextToken`` is opaque
and tied to one listing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from ._settings import EngineError

__all__ = [
    "IdempotencyCache",
    "check_client_request_token",
    "check_failure_reason",
    "check_max_results",
    "check_outputs",
    "check_sort_order",
    "check_token",
    "fingerprint",
    "paginate",
]

MAX_OUTPUT_PARAMETERS: Final = 50
MAX_OUTPUT_NAME: Final = 256
MAX_OUTPUT_VALUE: Final = 1024
MAX_FAILURE_REASON: Final = 256
MIN_CLIENT_REQUEST_TOKEN: Final = 32
MAX_CLIENT_REQUEST_TOKEN: Final = 128

_TOKEN_RE: Final = re.compile(r"^[a-zA-Z0-9]{10}$")

_Item = TypeVar("_Item")


# ---------------------------------------------------------------------- fields


def check_token(value: Any) -> str:
    """:return: ``value``, a callback token (exactly 10 characters of ``[a-zA-Z0-9]``)."""
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'callbackToken' failed to satisfy constraint: "
            "CallbackToken must be exactly 10 characters matching [a-zA-Z0-9]+",
        )
    return value


def check_client_request_token(value: Any) -> str | None:
    """:return: ``value``, ``None`` or a ``ClientRequestToken`` of 32..128 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not MIN_CLIENT_REQUEST_TOKEN <= len(value) <= MAX_CLIENT_REQUEST_TOKEN:
        length = len(value) if isinstance(value, str) else "?"
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'clientRequestToken' failed to satisfy constraint: "
            f"ClientRequestToken must be {MIN_CLIENT_REQUEST_TOKEN}..{MAX_CLIENT_REQUEST_TOKEN} "
            f"characters long (got {length})",
        )
    return value


def check_failure_reason(value: Any) -> str:
    """:return: ``value`` (at most 256 characters), ``""`` for ``None``."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FAILURE_REASON:
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'failureReason' failed to satisfy constraint: "
            f"FailureReason must be at most {MAX_FAILURE_REASON} characters long",
        )
    return value


def check_outputs(value: Any) -> list[dict[str, str]]:
    """
    :return: ``OutputParameters`` as ``[{"Name", "Value"}]``: at most 50, names up to 256 and
        values up to 1024 characters, no name twice.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise EngineError("ValidationException", "OutputParameters must be a list")
    if len(value) > MAX_OUTPUT_PARAMETERS:
        raise EngineError(
            "ValidationException",
            "1 validation error detected: Value at 'outputParameters' failed to satisfy constraint: "
            f"OutputParameters must have at most {MAX_OUTPUT_PARAMETERS} members (got {len(value)})",
        )
    outputs: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise EngineError("ValidationException", f"OutputParameters.{index} must be an object")
        name = item.get("Name")
        raw = item.get("Value")
        if not isinstance(name, str) or len(name) > MAX_OUTPUT_NAME:
            raise EngineError(
                "ValidationException",
                f"1 validation error detected: Value at 'outputParameters.{index}.member.name' failed to "
                f"satisfy constraint: OutputParameters Name must be a string of at most {MAX_OUTPUT_NAME} "
                "characters",
            )
        if not isinstance(raw, str) or len(raw) > MAX_OUTPUT_VALUE:
            raise EngineError(
                "ValidationException",
                f"1 validation error detected: Value at 'outputParameters.{index}.member.value' failed "
                f"to satisfy constraint: OutputParameters Value of {name!r} must be a string of at most "
                f"{MAX_OUTPUT_VALUE} characters",
            )
        if name in seen:
            raise EngineError("ValidationException", f"OutputParameters: output {name!r} is given twice")
        seen.add(name)
        outputs.append({"Name": name, "Value": raw})
    return outputs


def check_max_results(value: Any) -> int:
    """:return: ``MaxResults``, 1..100 (100 when omitted)."""
    if value is None:
        return 100
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise EngineError(
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'maxResults' failed to satisfy "
            "constraint: MaxResults must be between 1 and 100",
        )
    return value


def check_sort_order(value: Any) -> str:
    """:return: ``SortOrder``, ``Ascending`` or ``Descending`` (the default)."""
    if value is None:
        return "Descending"
    if value not in ("Ascending", "Descending"):
        raise EngineError(
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'sortOrder' failed to satisfy "
            "constraint: SortOrder must be Ascending or Descending",
        )
    return str(value)


# ---------------------------------------------------------------------- idempotency


def fingerprint(*parts: Any) -> str:
    """:return: a text that is equal for two requests exactly when their parameters are."""
    return json.dumps(parts, sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class _IdempotentCall:
    operation: str
    fingerprint: str
    response: dict[str, Any]


class IdempotencyCache:
    """
    The first successful answer to each ``ClientRequestToken``, per account.

    Not thread-safe by itself: the engine calls it under its lock.
    """

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], _IdempotentCall] = {}

    def replay(
        self, account_id: str, operation: str, token: str | None, request_fingerprint: str
    ) -> dict[str, Any] | None:
        """
        :return: the remembered answer when ``token`` was used for this same request, else ``None``.
        :raises EngineError: ``ValidationException`` when ``token`` was used for another request.
        """
        if not token:
            return None
        seen = self._calls.get((account_id, token))
        if seen is None:
            return None
        if seen.operation != operation or seen.fingerprint != request_fingerprint:
            raise EngineError(
                "ValidationException",
                "ClientRequestToken: this token was already used for a different request "
                f"({seen.operation}); use a new ClientRequestToken for a new request.",
            )
        return dict(seen.response)

    def remember(
        self,
        account_id: str,
        operation: str,
        token: str | None,
        request_fingerprint: str,
        response: dict[str, Any],
    ) -> None:
        """Keep ``response`` as the answer to ``token`` (nothing without a token)."""
        if token:
            self._calls[(account_id, token)] = _IdempotentCall(operation, request_fingerprint, dict(response))


# ---------------------------------------------------------------------- pages


def _encode_page_token(scope: str, offset: int) -> str:
    raw = json.dumps({"scope": scope, "offset": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_page_token(token: str | None, scope: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = data["offset"]
        if data["scope"] != scope or not isinstance(offset, int) or offset < 0:
            raise ValueError("token does not belong to this listing")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise EngineError("ValidationException", "NextToken is not valid for this request") from None
    return offset


def paginate(
    items: Sequence[_Item], limit: int, next_token: str | None, scope: str
) -> tuple[Sequence[_Item], str | None]:
    """
    One page of a listing.

    :param items: the whole listing, in order.
    :param limit: the page size.
    :param next_token: the previous page's ``NextToken`` (``None`` for the first page).
    :param scope: what the listing is of (an ARN); a token from another listing is refused.
    :return: the page and the ``NextToken`` of the next one (``None`` on the last page).
    :raises EngineError: ``ValidationException`` for a token that is not this listing's.
    """
    offset = _decode_page_token(next_token, scope)
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    return page, _encode_page_token(scope, offset + limit) if more else None
