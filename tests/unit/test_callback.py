from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_sm_callback.protocol import (
    MAX_BODY_BYTES,
    CallbackMatcher,
    CallbackMessage,
    CallbackStatus,
    CallbackStep,
    InvalidCallbackMessage,
    InvalidOutputParameters,
    MessageDefect,
    Outcome,
    OutputType,
    ReceivedMessages,
    callback_steps_in_definition,
    client_request_token,
    coerce_output_value,
    encode_output_parameters,
    mask_token,
    parse_execution_arn,
    truncate_failure_reason,
)

MESSAGES = Path(__file__).parents[1] / "data" / "messages"
DEFINITION = Path(__file__).parents[2] / "example_dags" / "pipelines" / "sdk-callback-with-condition.json"
ARN = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/abcdefabcdef"


def body(**overrides: object) -> str:
    data: dict[str, object] = {
        "token": "Ab3dE6gH9k",
        "pipelineExecutionArn": ARN,
        "arguments": {"a": 1},
        "status": "Executing",
    }
    data.update(overrides)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


# --------------------------------------------------------------------------------------------
# Every reference message is a test case
# --------------------------------------------------------------------------------------------


def test_executing_reference_message() -> None:
    cb = CallbackMessage.from_body((MESSAGES / "executing.json").read_text(), message_id="m-1")
    assert cb.token == "26vcYbeWsZ"
    assert cb.pipeline_execution_arn.endswith("/execution/7pinimwddh3a")
    assert cb.pipeline_name == "callback-pipeline"
    assert cb.execution_id == "7pinimwddh3a"
    assert cb.arguments == {
        "number": 5,
        "stringArg": "some-arg",
        "inputData": "s3://sagemaker-us-west-2-012345678901/abalone/abalone-dataset.csv",
    }
    assert cb.status is CallbackStatus.EXECUTING
    assert not cb.is_stopping
    assert cb.message_id == "m-1"


def test_stopping_reference_message_has_same_token() -> None:
    executing = CallbackMessage.from_body((MESSAGES / "executing.json").read_text())
    stopping = CallbackMessage.from_body((MESSAGES / "stopping.json").read_text())
    assert stopping.is_stopping
    assert stopping.token == executing.token


def test_capitalised_status_key_is_read() -> None:
    cb = CallbackMessage.from_body((MESSAGES / "capitalised-status.json").read_text())
    assert cb.status is CallbackStatus.STOPPING
    assert cb.arguments == {}
    assert cb.pipeline_name == "nightly"


def test_floats_and_step_name_keep_json_types() -> None:
    cb = CallbackMessage.from_body((MESSAGES / "floats-and-step-name.json").read_text())
    assert cb.arguments["baseline_accuracy"] == pytest.approx(0.8235294117647058)
    assert isinstance(cb.arguments["baseline_accuracy"], float)
    assert cb.arguments["step_name"] == "evaluate-model"
    assert cb.pipeline_name == "e2e-ml-pipeline"


@pytest.mark.parametrize(
    ("name", "defect", "foreign", "text"),
    [
        ("broken-bad-token.json", MessageDefect.BAD_TOKEN, False, "token' is malformed"),
        ("broken-no-token.json", MessageDefect.MISSING_TOKEN, False, "no 'token'"),
        ("broken-not-json.txt", MessageDefect.NOT_JSON, True, "not JSON"),
        ("foreign-s3-event.json", MessageDefect.NOT_CALLBACK, True, "not a SageMaker callback message"),
    ],
)
def test_broken_reference_messages(name: str, defect: MessageDefect, foreign: bool, text: str) -> None:
    raw = (MESSAGES / name).read_text()
    with pytest.raises(InvalidCallbackMessage) as info:
        CallbackMessage.from_body(raw, message_id="m-9")
    assert info.value.defect is defect
    assert info.value.foreign is foreign
    assert text in str(info.value)
    assert "m-9" in str(info.value)
    if "token" in raw:
        assert "short!" not in str(info.value)


def test_every_reference_message_is_covered() -> None:
    covered = {
        "executing.json",
        "stopping.json",
        "capitalised-status.json",
        "floats-and-step-name.json",
        "broken-bad-token.json",
        "broken-no-token.json",
        "broken-not-json.txt",
        "foreign-s3-event.json",
    }
    assert {p.name for p in MESSAGES.iterdir()} == covered


# --------------------------------------------------------------------------------------------
# Parser defects
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "defect", "text"),
    [
        (b"\xff\xfe{}", MessageDefect.NOT_TEXT, "not UTF-8"),
        ("[1, 2]", MessageDefect.NOT_CALLBACK, "not an object"),
        ('"just a string"', MessageDefect.NOT_CALLBACK, "not an object"),
        ("{}", MessageDefect.NOT_CALLBACK, "keys: none"),
        (body(token=12345), MessageDefect.BAD_TOKEN, "got a int"),
        (body(token="Ab3dE6gH9"), MessageDefect.BAD_TOKEN, "got 9 characters"),
        (body(token="Ab3dE6gH9-"), MessageDefect.BAD_TOKEN, "10 characters"),
        (body(pipelineExecutionArn=...), MessageDefect.MISSING_ARN, "no 'pipelineExecutionArn'"),
        (body(pipelineExecutionArn="arn:aws:s3:::bucket"), MessageDefect.BAD_ARN, "malformed"),
        (body(pipelineExecutionArn=7), MessageDefect.BAD_ARN, "malformed"),
        (body(arguments=[1, 2]), MessageDefect.BAD_ARGUMENTS, "must be a JSON object, got list"),
        (body(arguments=None), MessageDefect.BAD_ARGUMENTS, "got NoneType"),
        (body(status="Running"), MessageDefect.BAD_STATUS, "Executing or Stopping"),
        (body(status=3), MessageDefect.BAD_STATUS, "Executing or Stopping"),
        ('{"token": "Ab3dE6gH9k", "x": NaN}', MessageDefect.NOT_JSON, "NaN is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, MessageDefect.NOT_JSON, "nested too deeply"),
        ('{"a": ' + "9" * 5000 + "}", MessageDefect.NOT_JSON, "not JSON"),
    ],
)
def test_parser_names_the_defect(raw: str | bytes, defect: MessageDefect, text: str) -> None:
    with pytest.raises(InvalidCallbackMessage) as info:
        CallbackMessage.from_body(raw)
    assert info.value.defect is defect
    assert text in str(info.value)
    assert "Ab3dE6gH9" not in str(info.value)


def test_conflicting_status_keys() -> None:
    raw = json.dumps(
        {"token": "Ab3dE6gH9k", "pipelineExecutionArn": ARN, "status": "Executing", "Status": "Stopping"}
    )
    with pytest.raises(InvalidCallbackMessage, match="conflicting"):
        CallbackMessage.from_body(raw)


def test_status_is_case_insensitive_and_defaults_to_executing() -> None:
    assert CallbackMessage.from_body(body(status="STOPPING")).status is CallbackStatus.STOPPING
    assert CallbackMessage.from_body(body(status=...)).status is CallbackStatus.EXECUTING
    assert CallbackMessage.from_body(body(arguments=...)).arguments == {}


def test_bodies_over_the_sqs_limit_are_rejected_before_parsing() -> None:
    filler = "x" * (MAX_BODY_BYTES + 1 - len(body(arguments={"f": ""})))
    at_limit = body(arguments={"f": filler[:-1]})
    assert len(at_limit.encode()) == MAX_BODY_BYTES
    assert CallbackMessage.from_body(at_limit).arguments["f"] == filler[:-1]
    over = body(arguments={"f": filler})
    with pytest.raises(InvalidCallbackMessage) as info:
        CallbackMessage.from_body(over)
    assert info.value.defect is MessageDefect.TOO_LARGE
    assert "1048577 bytes" in str(info.value)
    with pytest.raises(InvalidCallbackMessage, match="over the SQS limit"):
        CallbackMessage.from_body(over.encode())


def test_lone_surrogates_are_not_text() -> None:
    with pytest.raises(InvalidCallbackMessage) as info:
        CallbackMessage.from_body('{"token": "\ud800"}')
    assert info.value.defect is MessageDefect.NOT_TEXT


def test_odd_unicode_in_arguments_is_kept() -> None:
    args = {"name": "Zoë 🧪 \u200b \u0301", "json": '{"nested": "text"}', "jinja": "{{ ti.xcom_pull() }}"}
    assert CallbackMessage.from_body(body(arguments=args)).arguments == args


def test_from_sqs_reads_attributes() -> None:
    message = {
        "MessageId": "id-1",
        "ReceiptHandle": "rh-1",
        "Body": body(),
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1700000000000"},
    }
    cb = CallbackMessage.from_sqs(message)
    assert cb.message_id == "id-1"
    assert cb.receipt_handle == "rh-1"
    assert cb.receive_count == 3
    assert cb.sent_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_repr_masks_the_token() -> None:
    cb = CallbackMessage.from_body(body())
    assert "Ab3dE6gH9k" not in repr(cb)
    assert "Ab3dE6gH9k" not in str(cb)
    assert mask_token("Ab3dE6gH9k") == "Ab********"


def test_to_dict_round_trip_is_json() -> None:
    cb = CallbackMessage.from_sqs(
        {
            "MessageId": "id-1",
            "ReceiptHandle": "rh",
            "Body": body(),
            "Attributes": {"SentTimestamp": "1700000000000"},
        }
    ).with_step_name("Score")
    data = json.loads(json.dumps(cb.to_dict()))
    assert data["token"] == "Ab3dE6gH9k"
    assert data["step_name"] == "Score"
    assert data["status"] == "Executing"
    again = CallbackMessage.from_dict(data)
    assert again.token == cb.token
    assert again.step_name == "Score"
    assert again.sent_at == cb.sent_at
    assert again.receipt_handle is None


def test_from_dict_rejects_what_is_not_a_callback() -> None:
    with pytest.raises(InvalidCallbackMessage):
        CallbackMessage.from_dict({"token": "nope"})
    with pytest.raises(InvalidCallbackMessage):
        CallbackMessage.from_dict("a string")  # type: ignore[arg-type]


def test_received_messages_keeps_invalid_apart() -> None:
    received = ReceivedMessages.parse(
        [
            {"MessageId": "1", "ReceiptHandle": "r1", "Body": body()},
            {
                "MessageId": "2",
                "ReceiptHandle": "r2",
                "Body": "nope",
                "Attributes": {"ApproximateReceiveCount": "4"},
            },
        ]
    )
    assert [c.message_id for c in received.callbacks] == ["1"]
    assert [(m.message_id, m.receipt_handle, m.receive_count) for m in received.invalid] == [("2", "r2", 4)]
    assert received.invalid[0].error.foreign
    assert len(received) == 2


def test_parse_execution_arn() -> None:
    assert parse_execution_arn(ARN) == ("us-east-1", "111122223333", "p", "abcdefabcdef")
    assert (
        parse_execution_arn("arn:aws-cn:sagemaker:cn-north-1:111122223333:pipeline/x-y/execution/1")[2]
        == "x-y"
    )
    with pytest.raises(ValueError, match="not a SageMaker pipeline execution ARN"):
        parse_execution_arn("arn:aws:sagemaker:us-east-1:111122223333:pipeline/p")


# --------------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------------


def cb_with(arguments: dict[str, object], arn: str = ARN) -> CallbackMessage:
    return CallbackMessage.from_body(body(arguments=arguments, pipelineExecutionArn=arn))


def test_matcher_by_arn_name_and_arguments() -> None:
    other = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/q/execution/zzzzzzzzzzzz"
    assert CallbackMatcher(pipeline_execution_arn=ARN).matches(cb_with({}))
    assert not CallbackMatcher(pipeline_execution_arn=ARN).matches(cb_with({}, other))
    assert CallbackMatcher(pipeline_name="p").matches(cb_with({}))
    assert not CallbackMatcher(pipeline_name="q").matches(cb_with({}))
    by_arg = CallbackMatcher(pipeline_name="p", arguments={"step_name": "score"})
    assert by_arg.matches(cb_with({"step_name": "score", "x": 1}))
    assert not by_arg.matches(cb_with({"step_name": "approve"}))
    assert not by_arg.matches(cb_with({}))


def test_matcher_argument_equality_is_json_aware() -> None:
    assert CallbackMatcher(arguments={"n": 5}).matches(cb_with({"n": 5.0}))
    assert not CallbackMatcher(arguments={"n": 1}).matches(cb_with({"n": True}))
    assert not CallbackMatcher(arguments={"n": True}).matches(cb_with({"n": 1}))
    # Templated values render to text: a string matches a scalar by its encoding.
    assert CallbackMatcher(arguments={"n": "500"}).matches(cb_with({"n": 500}))
    assert CallbackMatcher(arguments={"t": "0.8"}).matches(cb_with({"t": 0.8}))
    assert CallbackMatcher(arguments={"b": "True"}).matches(cb_with({"b": True}))
    assert not CallbackMatcher(arguments={"n": "501"}).matches(cb_with({"n": 500}))
    assert not CallbackMatcher(arguments={"n": "abc"}).matches(cb_with({"n": 500}))
    assert CallbackMatcher(arguments={"d": {"k": [1, "a"]}}).matches(cb_with({"d": {"k": [1, "a"]}}))
    assert not CallbackMatcher(arguments={"d": {"k": [1]}}).matches(cb_with({"d": {"k": [1, 2]}}))


def test_matcher_step_name_needs_lookup() -> None:
    matcher = CallbackMatcher(pipeline_execution_arn=ARN, step_name="Score")
    assert matcher.needs_step_name
    cb = cb_with({})
    assert matcher.matches_message(cb)
    assert not matcher.matches(cb)
    assert matcher.matches(cb, step_name="Score")
    assert matcher.matches(cb.with_step_name("Score"))
    assert not matcher.matches(cb.with_step_name("Approve"))


def test_matcher_requires_a_criterion_and_consistency() -> None:
    with pytest.raises(ValueError, match="say which callback"):
        CallbackMatcher()
    with pytest.raises(ValueError, match="no callback can match both"):
        CallbackMatcher(pipeline_execution_arn=ARN, pipeline_name="other")
    with pytest.raises(ValueError, match="not a SageMaker pipeline execution ARN"):
        CallbackMatcher(pipeline_execution_arn="nope")


def test_matcher_serializes() -> None:
    matcher = CallbackMatcher(pipeline_execution_arn=ARN, step_name="S", arguments={"a": [1, 2]})
    data = json.loads(json.dumps(matcher.to_dict()))
    assert CallbackMatcher.from_dict(data) == matcher
    assert "execution" in matcher.describe()


# --------------------------------------------------------------------------------------------
# Output parameters
# --------------------------------------------------------------------------------------------


def test_encode_output_parameters_from_mapping_and_list() -> None:
    expected = [
        {"Name": "s", "Value": "text"},
        {"Name": "i", "Value": "42"},
        {"Name": "f", "Value": "0.8"},
        {"Name": "b", "Value": "true"},
        {"Name": "n", "Value": "false"},
    ]
    assert encode_output_parameters({"s": "text", "i": 42, "f": 0.8, "b": True, "n": False}) == expected
    assert encode_output_parameters(expected) == expected
    assert encode_output_parameters(None) == []
    assert encode_output_parameters({}) == []


@pytest.mark.parametrize(
    ("params", "parameter", "text"),
    [
        ({"x": None}, "x", "'x' is None"),
        ({"x": {"a": 1}}, "x", "nested value (dict)"),
        ({"x": [1]}, "x", "nested value (list)"),
        ({"x": float("nan")}, "x", "not a finite number"),
        ({"x": float("inf")}, "x", "not a finite number"),
        ({"x": object()}, "x", "has type object"),
        ({"x": "v" * 1025}, "x", "1025 characters"),
        ({"": "v"}, "", "has 0 characters"),
        ({"n" * 257: "v"}, "n" * 257, "has 257 characters"),
        ({"x": "\ud800"}, "x", "lone surrogates"),
        ([{"Name": "x", "Value": "1"}, {"Name": "x", "Value": "2"}], "x", "given twice"),
        ([{"Name": "x"}], None, "#0 must be"),
        ([{"Name": "x", "Value": "1", "Extra": 1}], None, "#0 must be"),
        ("not params", None, "got str"),
        ({1: "v"}, None, "is a int"),
    ],
)
def test_encode_output_parameters_rejects(params: object, parameter: str | None, text: str) -> None:
    with pytest.raises(InvalidOutputParameters) as info:
        encode_output_parameters(params)  # type: ignore[arg-type]
    assert text in str(info.value)
    assert info.value.parameter == parameter


def test_at_most_fifty_parameters() -> None:
    fifty = {f"p{i}": i for i in range(50)}
    assert len(encode_output_parameters(fifty)) == 50
    with pytest.raises(InvalidOutputParameters, match=r"51 output parameters given; .* at most 50"):
        encode_output_parameters({**fifty, "p50": 1})


def test_value_and_name_at_their_limits() -> None:
    encoded = encode_output_parameters({"n" * 256: "v" * 1024})
    assert encoded == [{"Name": "n" * 256, "Value": "v" * 1024}]


def test_declared_types_convert_text() -> None:
    declared = {"rows": "Integer", "auc": "Float", "passed": "Boolean", "uri": "String"}
    assert encode_output_parameters(
        {"rows": "7", "auc": "0.91", "passed": "True", "uri": "s3://b/k"}, declared
    ) == [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "0.91"},
        {"Name": "passed", "Value": "true"},
        {"Name": "uri", "Value": "s3://b/k"},
    ]
    assert encode_output_parameters({"rows": 7.0, "auc": 1, "passed": False, "uri": 3}, declared) == [
        {"Name": "rows", "Value": "7"},
        {"Name": "auc", "Value": "1.0"},
        {"Name": "passed", "Value": "false"},
        {"Name": "uri", "Value": "3"},
    ]
    with pytest.raises(
        InvalidOutputParameters, match=r"'extra' is not declared .* declares: auc, passed, rows, uri"
    ):
        encode_output_parameters({"extra": 1}, declared)


@pytest.mark.parametrize(
    ("value", "declared", "text"),
    [
        ("None", OutputType.INTEGER, "declared Integer but got 'None'"),
        ("7.5", OutputType.INTEGER, "not a whole number"),
        (7.5, OutputType.INTEGER, "not a whole number"),
        (True, OutputType.INTEGER, "a boolean is not a number"),
        ("yes", OutputType.BOOLEAN, "expected true or false"),
        (1, OutputType.BOOLEAN, "expected true or false"),
        ("abc", OutputType.FLOAT, "declared Float"),
        ("nan", OutputType.FLOAT, "not a finite number"),
        (None, OutputType.STRING, "is None"),
        ({"a": 1}, OutputType.INTEGER, "nested value"),
        ("1", "Decimal", "unknown OutputType"),
    ],
)
def test_coerce_output_value_rejects(value: object, declared: str, text: str) -> None:
    with pytest.raises(InvalidOutputParameters) as info:
        coerce_output_value("out", value, declared)
    assert text in str(info.value)
    assert info.value.parameter == "out"


def test_coerce_output_value_accepts() -> None:
    assert coerce_output_value("o", " -3 ", OutputType.INTEGER) == "-3"
    assert coerce_output_value("o", "7.0", OutputType.INTEGER) == "7"
    assert coerce_output_value("o", "1e3", OutputType.FLOAT) == "1000.0"
    assert coerce_output_value("o", "FALSE", OutputType.BOOLEAN) == "false"
    assert coerce_output_value("o", "None", OutputType.STRING) == "None"


# --------------------------------------------------------------------------------------------
# Failure reasons and request tokens
# --------------------------------------------------------------------------------------------


def test_failure_reason_is_cut_safely() -> None:
    assert truncate_failure_reason("short") == "short"
    assert truncate_failure_reason("x" * 256) == "x" * 256
    cut = truncate_failure_reason("y" * 1000)
    assert len(cut) == 256
    assert cut.startswith("yyyy")
    assert cut.endswith("...[truncated]")
    combining = "a" * 240 + "e\u0301" * 40
    cut = truncate_failure_reason(combining)
    assert len(cut) <= 256
    assert not cut.replace(" ...[truncated]", "").endswith("e")  # never split e from its accent
    assert truncate_failure_reason(None) == ""
    assert truncate_failure_reason(ValueError("boom")) == "boom"
    assert "\ud800" not in truncate_failure_reason("bad \ud800 text")


def test_client_request_token_is_deterministic_and_distinct() -> None:
    base = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1, "callback_token": "Ab3dE6gH9k"}
    first = client_request_token(outcome=Outcome.SUCCESS, **base)  # type: ignore[arg-type]
    assert first == client_request_token(outcome="success", **base)  # type: ignore[arg-type]
    assert 32 <= len(first) <= 128
    assert first != client_request_token(outcome=Outcome.FAILURE, **base)  # type: ignore[arg-type]
    for key, value in [
        ("dag_id", "d2"),
        ("run_id", "r2"),
        ("task_id", "t2"),
        ("map_index", 0),
        ("callback_token", "Zz3dE6gH9k"),
    ]:
        changed = {**base, key: value}
        assert client_request_token(outcome=Outcome.SUCCESS, **changed) != first  # type: ignore[arg-type]
    assert "Ab3dE6gH9k" not in first


# --------------------------------------------------------------------------------------------
# Step state and definitions
# --------------------------------------------------------------------------------------------


def test_callback_step_from_api() -> None:
    item = {
        "StepName": "Score",
        "StepStatus": "Succeeded",
        "Metadata": {
            "Callback": {
                "CallbackToken": "Ab3dE6gH9k",
                "SqsQueueUrl": "https://q",
                "OutputParameters": [{"Name": "rows", "Value": "7"}],
            }
        },
    }
    step = CallbackStep.from_api(item)
    assert step is not None
    assert step.is_closed
    assert not step.is_open
    assert step.output_parameters == {"rows": "7"}
    assert "Ab3dE6gH9k" not in repr(step)
    assert (
        CallbackStep.from_api({"StepName": "Cond", "StepStatus": "Succeeded", "Metadata": {"Condition": {}}})
        is None
    )


def test_callback_steps_in_sdk_definition() -> None:
    steps = callback_steps_in_definition(DEFINITION.read_text())
    assert steps == {
        "ScoreInWarehouse": {
            "rows_scored": OutputType.INTEGER,
            "auc": OutputType.FLOAT,
            "passed": OutputType.BOOLEAN,
            "report_uri": OutputType.STRING,
        },
        "HumanApproval": {"approved_by": OutputType.STRING},
    }
    with pytest.raises(ValueError, match="not JSON"):
        callback_steps_in_definition("{nope")


def test_tokens_in_rendered_fields_are_found() -> None:
    from airflow_sm_callback._airflow import redact
    from airflow_sm_callback.utils.masking import mask_tokens_in

    mask_tokens_in(
        {
            "callback": "{'token': 'Rr3dE6gH9k', 'pipeline_execution_arn': 'arn'}",
            "native": {"token": "Ss3dE6gH9k"},
            "listed": [{"callback_token": "Tt3dE6gH9k"}],
            "other": "token 'Uu3dE6gH9k' said nothing",
        }
    )
    assert redact("Rr3dE6gH9k Ss3dE6gH9k Tt3dE6gH9k") == "*** *** ***"
    assert redact("Uu3dE6gH9k") == "Uu3dE6gH9k"
