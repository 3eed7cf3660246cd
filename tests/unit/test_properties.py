"""
Property-based tests of the parser and the output-parameter encoder: whatever arrives, the result
is a parsed callback or one clear error, never an unhandled exception.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_sm_callback.protocol import (
    MAX_BODY_BYTES,
    MAX_OUTPUT_PARAMETERS,
    MAX_OUTPUT_VALUE,
    CallbackMessage,
    InvalidCallbackMessage,
    InvalidOutputParameters,
    OutputType,
    coerce_output_value,
    encode_output_parameters,
    truncate_failure_reason,
)

ARN = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/abcdefabcdef"
TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=10, max_size=10
)
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = {"token", "pipelineExecutionArn", "arguments", "status", "Status"}


def parse(body: str | bytes) -> CallbackMessage | None:
    """Parse, asserting that the only possible failure is a clear InvalidCallbackMessage."""
    try:
        return CallbackMessage.from_body(body, message_id="m")
    except InvalidCallbackMessage as err:
        assert str(err).startswith("message m: ")
        assert err.detail
        return None


@given(st.binary(max_size=2048))
def test_any_bytes(body: bytes) -> None:
    parse(body)


@given(st.text(max_size=2048))
def test_any_text(body: str) -> None:
    parse(body)


@given(JSON)
def test_any_json(value: Any) -> None:
    parse(json.dumps(value))


@given(
    token=TOKEN | JSON,
    arn=st.just(ARN) | JSON,
    arguments=st.dictionaries(st.text(max_size=10), JSON, max_size=5) | JSON,
    status=st.sampled_from(["Executing", "Stopping", "executing", "STOPPING"]) | JSON,
    status_key=st.sampled_from(["status", "Status", "STATUS"]),
    drop=st.sets(st.sampled_from(["token", "pipelineExecutionArn", "arguments", "status"])),
)
def test_wrong_types_in_every_field(
    token: Any, arn: Any, arguments: Any, status: Any, status_key: str, drop: set[str]
) -> None:
    body = {"token": token, "pipelineExecutionArn": arn, "arguments": arguments, "status": status}
    body = {(status_key if k == "status" else k): v for k, v in body.items() if k not in drop}
    parsed = parse(json.dumps(body))
    if parsed is not None:
        # Whatever parses is a real callback, and its dict form round-trips.
        assert len(parsed.token) == 10
        assert parsed.token.isalnum()
        assert isinstance(parsed.arguments, dict)
        assert parsed.status.value in {"Executing", "Stopping"}
        again = CallbackMessage.from_dict(json.loads(json.dumps(parsed.to_dict())))
        assert again.token == parsed.token
        assert again.arguments == parsed.arguments


@given(TOKEN, st.dictionaries(st.text(), JSON, max_size=6))
def test_valid_callbacks_parse_with_their_arguments(token: str, arguments: dict[str, Any]) -> None:
    body = json.dumps(
        {"token": token, "pipelineExecutionArn": ARN, "arguments": arguments, "status": "Executing"}
    )
    assume(len(body.encode()) <= MAX_BODY_BYTES)
    parsed = parse(body)
    assert parsed is not None
    assert parsed.token == token
    assert parsed.arguments == json.loads(json.dumps(arguments))
    assert token not in repr(parsed)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=20)
@given(st.integers(min_value=-64, max_value=64))
def test_bodies_around_the_sqs_limit(delta: int) -> None:
    head = json.dumps({"token": "Ab3dE6gH9k", "pipelineExecutionArn": ARN, "arguments": {"f": ""}})
    filler = "x" * (MAX_BODY_BYTES - len(head.encode()) + delta)
    body = head.replace('"f": ""', f'"f": "{filler}"')
    parsed = parse(body)
    assert (parsed is not None) == (len(body.encode()) <= MAX_BODY_BYTES)


SCALARS = st.booleans() | st.integers() | st.floats() | st.text() | st.none()
VALUES = SCALARS | st.lists(SCALARS, max_size=2) | st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)


@given(st.dictionaries(st.text(max_size=300), VALUES, max_size=60))
def test_encoder_result_or_clear_error(parameters: dict[Any, Any]) -> None:
    try:
        encoded = encode_output_parameters(parameters)
    except InvalidOutputParameters as err:
        assert str(err)
        assert err.parameter is None or err.parameter in parameters
        return
    assert len(encoded) == len(parameters) <= MAX_OUTPUT_PARAMETERS
    for item, (name, value) in zip(encoded, parameters.items(), strict=True):
        assert item["Name"] == name
        assert isinstance(item["Value"], str)
        assert len(item["Value"]) <= MAX_OUTPUT_VALUE
        if isinstance(value, bool):
            assert item["Value"] == ("true" if value else "false")
        elif isinstance(value, int):
            assert int(item["Value"]) == value
        elif isinstance(value, float):
            assert math.isfinite(value)
            assert float(item["Value"]) == value
        else:
            assert item["Value"] == value


@given(VALUES, st.sampled_from(list(OutputType)))
def test_declared_type_conversion_round_trips(value: Any, declared: OutputType) -> None:
    try:
        text = coerce_output_value("out", value, declared)
    except InvalidOutputParameters as err:
        assert err.parameter == "out"
        assert "'out'" in str(err)
        return
    if declared is OutputType.INTEGER:
        assert str(int(text)) == text
    elif declared is OutputType.FLOAT:
        assert math.isfinite(float(text))
    elif declared is OutputType.BOOLEAN:
        assert text in {"true", "false"}
    else:
        assert isinstance(text, str)


@given(st.text())
def test_failure_reason_always_fits(reason: str) -> None:
    cut = truncate_failure_reason(reason)
    assert len(cut) <= 256
    cut.encode("utf-8")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        return
    if len(reason) <= 256:
        assert cut == reason
    else:
        assert cut.endswith("...[truncated]")
        assert reason.startswith(cut.removesuffix(" ...[truncated]"))
