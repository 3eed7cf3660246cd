"""
The emulator's request log, fault injection and SQS helpers, driven with boto3 over HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from airflow_sm_callback.testing import CallbackEmulator, EmulatorError

pytestmark = [pytest.mark.integration, pytest.mark.emulator]

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})


def _definition(queue_url: str) -> dict[str, Any]:
    return {
        "Version": "2020-12-01",
        "Steps": [
            {
                "Name": "Wait",
                "Type": "Callback",
                "Arguments": {"k": "v"},
                "SqsQueueUrl": queue_url,
                "OutputParameters": [{"OutputName": "n", "OutputType": "Integer"}],
            }
        ],
    }


@pytest.fixture(scope="module")
def emulator() -> Iterator[CallbackEmulator]:
    with CallbackEmulator() as started:
        yield started


@pytest.fixture(autouse=True)
def _reset_emulator(emulator: CallbackEmulator) -> Iterator[None]:
    emulator.reset()
    yield
    emulator.reset()


@pytest.fixture(scope="module")
def sqs(emulator: CallbackEmulator) -> Any:
    return emulator.client("sqs", config=NO_RETRY)


@pytest.fixture(scope="module")
def sm(emulator: CallbackEmulator) -> Any:
    return emulator.client("sagemaker", config=NO_RETRY)


@pytest.fixture
def queue_url(emulator: CallbackEmulator) -> str:
    return emulator.create_queue(f"q-{uuid.uuid4().hex[:12]}")


def _executing(emulator: CallbackEmulator, queue_url: str) -> tuple[str, str]:
    name = f"p-{uuid.uuid4().hex[:12]}"
    emulator.create_pipeline(name, _definition(queue_url))
    arn = emulator.start_execution(name)
    token = json.loads(emulator.queue_messages(queue_url)[0]["Body"])["token"]
    return arn, token


# ---------------------------------------------------------------------- request log


def test_request_log_counts_client_requests(
    emulator: CallbackEmulator, sqs: Any, sm: Any, queue_url: str
) -> None:
    arn, _ = _executing(emulator, queue_url)  # helper calls: internal
    emulator.clear_requests()
    before = time.time()
    for _ in range(3):
        sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0, VisibilityTimeout=0)
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    with pytest.raises(ClientError):
        sm.describe_pipeline_execution(PipelineExecutionArn=arn.replace("/execution/", "/execution/x"))

    assert emulator.request_counts() == {
        "ReceiveMessage": 3,
        "SendMessage": 1,
        "DescribePipelineExecution": 2,
    }
    assert emulator.request_counts("sqs") == {"ReceiveMessage": 3, "SendMessage": 1}
    assert emulator.request_counts(service="sagemaker") == {"DescribePipelineExecution": 2}
    records = emulator.requests()
    assert [(r["service"], r["action"], r["status"]) for r in records] == [
        ("sqs", "ReceiveMessage", 200),
        ("sqs", "ReceiveMessage", 200),
        ("sqs", "ReceiveMessage", 200),
        ("sqs", "SendMessage", 200),
        ("sagemaker", "DescribePipelineExecution", 200),
        ("sagemaker", "DescribePipelineExecution", 400),
    ]
    assert all(r["time"] >= before and not r["internal"] and r["fault_id"] is None for r in records)
    assert [r["monotonic"] for r in records] == sorted(r["monotonic"] for r in records)
    assert len(emulator.requests("sqs")) == 4

    emulator.clear_requests()
    assert emulator.request_counts() == {}
    assert emulator.requests() == []


def test_callback_messages_and_helpers_are_not_client_requests(
    emulator: CallbackEmulator, queue_url: str
) -> None:
    emulator.clear_requests()
    _executing(emulator, queue_url)  # sends a callback message through moto's backend
    assert emulator.request_counts() == {}
    internal = emulator.request_counts(include_internal=True)
    assert internal["CreatePipeline"] == 1
    assert internal["StartPipelineExecution"] == 1
    assert "SendMessage" not in internal
    assert all(r["internal"] for r in emulator.requests(include_internal=True))


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("action", "code", "http_status"),
    [
        ("ReceiveMessage", "ThrottlingException", 400),
        ("ReceiveMessage", "RequestThrottled", 403),
        ("*", "InternalError", 500),
        ("*", "ServiceUnavailable", 503),
    ],
)
def test_sqs_faults_parse_to_the_exact_code(
    emulator: CallbackEmulator, sqs: Any, queue_url: str, action: str, code: str, http_status: int
) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="still here")
    fault_id = emulator.inject_fault("sqs", action, code=code, http_status=http_status, message="injected!")
    with pytest.raises(ClientError) as exc_info:
        sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
    error = exc_info.value.response["Error"]
    assert error["Code"] == code
    assert error["Message"] == "injected!"
    assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == http_status
    # The faulted request never reached moto: the message was not received.
    (message,) = emulator.queue_messages(queue_url)
    assert message["Attributes"]["ApproximateReceiveCount"] == "0"
    (record,) = emulator.requests()[-1:]
    assert (record["action"], record["status"], record["fault_id"]) == (
        "ReceiveMessage",
        http_status,
        fault_id,
    )
    if action == "*":
        with pytest.raises(ClientError) as exc_info:
            sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
        assert exc_info.value.response["Error"]["Code"] == code
    emulator.clear_faults()
    assert len(sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)["Messages"]) == 1


@pytest.mark.parametrize(
    ("code", "modelled"),
    [
        ("ThrottlingException", None),
        ("ConflictException", "ConflictException"),
        ("ResourceNotFound", "ResourceNotFound"),
    ],
)
@pytest.mark.parametrize("action", ["SendPipelineExecutionStepSuccess", "SendPipelineExecutionStepFailure"])
def test_sagemaker_close_faults_parse_to_the_exact_code(
    emulator: CallbackEmulator, sm: Any, queue_url: str, action: str, code: str, modelled: str | None
) -> None:
    arn, token = _executing(emulator, queue_url)
    emulator.inject_fault("sagemaker", action, code=code, count=1)
    call = (
        (lambda: sm.send_pipeline_execution_step_success(CallbackToken=token))
        if action == "SendPipelineExecutionStepSuccess"
        else (lambda: sm.send_pipeline_execution_step_failure(CallbackToken=token, FailureReason="r"))
    )
    with pytest.raises(ClientError) as exc_info:
        call()
    assert exc_info.value.response["Error"]["Code"] == code
    assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    if modelled:
        assert isinstance(exc_info.value, getattr(sm.exceptions, modelled))
    assert emulator.step(arn, "Wait")["StepStatus"] == "Executing"  # nothing changed
    assert emulator.faults() == []  # count=1: used up
    call()  # goes through now
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] in ("Succeeded", "Failed")


def test_throttling_is_retried_by_botocore_standard_mode(emulator: CallbackEmulator, queue_url: str) -> None:
    arn, token = _executing(emulator, queue_url)
    sqs = emulator.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    sm = emulator.client("sagemaker", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    emulator.inject_fault("sqs", "ReceiveMessage", code="ThrottlingException", count=1)
    emulator.inject_fault(
        "sagemaker", "SendPipelineExecutionStepSuccess", code="ThrottlingException", count=1
    )

    response = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(response["Messages"]) == 1
    closed = sm.send_pipeline_execution_step_success(
        CallbackToken=token, OutputParameters=[{"Name": "n", "Value": "1"}]
    )
    assert closed["ResponseMetadata"]["RetryAttempts"] == 1
    assert emulator.describe_execution(arn)["PipelineExecutionStatus"] == "Succeeded"
    assert [(r["action"], r["status"]) for r in emulator.requests()] == [
        ("ReceiveMessage", 400),
        ("ReceiveMessage", 200),
        ("SendPipelineExecutionStepSuccess", 400),
        ("SendPipelineExecutionStepSuccess", 200),
    ]


def test_fault_lifetimes(emulator: CallbackEmulator, sqs: Any, queue_url: str) -> None:
    never = emulator.inject_fault("sqs", "GetQueueAttributes", probability=0.0)
    sqs.get_queue_attributes(QueueUrl=queue_url)
    emulator.remove_fault(never)
    assert emulator.remove_fault(never) is False

    emulator.inject_fault("sqs", "GetQueueAttributes", seconds=0.3)
    with pytest.raises(ClientError):
        sqs.get_queue_attributes(QueueUrl=queue_url)
    time.sleep(0.35)
    sqs.get_queue_attributes(QueueUrl=queue_url)

    emulator.inject_fault("sqs", "GetQueueAttributes", count=2)
    for _ in range(2):
        with pytest.raises(ClientError):
            sqs.get_queue_attributes(QueueUrl=queue_url)
    sqs.get_queue_attributes(QueueUrl=queue_url)

    other = emulator.inject_fault("sagemaker")
    sqs.get_queue_attributes(QueueUrl=queue_url)  # another service: untouched
    (listed,) = emulator.faults()
    assert listed["fault_id"] == other
    assert listed["hits"] == 0
    with pytest.raises(EmulatorError):
        emulator.inject_fault("sqs", http_status=200)


def test_helpers_are_never_faulted(emulator: CallbackEmulator) -> None:
    emulator.inject_fault("*")
    url = emulator.create_queue(f"q-{uuid.uuid4().hex[:12]}")
    assert emulator.queue_messages(url) == []


# ---------------------------------------------------------------------- SQS helpers


def test_queue_messages_peeks_without_consuming(emulator: CallbackEmulator, sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="one")
    sqs.send_message(QueueUrl=queue_url, MessageBody="two", DelaySeconds=60)
    for _ in range(3):
        peeked = emulator.queue_messages(queue_url)
    assert [(m["Body"], m["InFlight"], m["Delayed"]) for m in peeked] == [
        ("one", False, False),
        ("two", False, True),
    ]
    assert peeked[0]["Attributes"]["ApproximateReceiveCount"] == "0"
    received = sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=30)["Messages"]
    assert [m["Body"] for m in received] == ["one"]
    peeked = emulator.queue_messages(queue_url)
    assert (peeked[0]["InFlight"], peeked[0]["Attributes"]["ApproximateReceiveCount"]) == (True, "1")
    assert peeked[0]["MessageId"] == received[0]["MessageId"]
    assert emulator.purge_queue(queue_url) == 2
    assert emulator.purge_queue(queue_url) == 0  # no once-a-minute limit
    assert emulator.queue_messages(queue_url) == []
    with pytest.raises(EmulatorError):
        emulator.queue_messages(queue_url + "-missing")


def test_create_queue_with_dead_letter_queue(emulator: CallbackEmulator, sqs: Any) -> None:
    name = f"q-{uuid.uuid4().hex[:12]}"
    url = emulator.create_queue(name, visibility_timeout=7, dead_letter_max_receive_count=2)
    dlq_url = emulator.dead_letter_queue_url(name)
    assert dlq_url.endswith(f"/{name}-dlq")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "7"
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(f":{name}-dlq")
    assert int(policy["maxReceiveCount"]) == 2
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    for _ in range(2):
        assert len(sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"]) == 1
    assert "Messages" not in sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
    assert [m["Body"] for m in emulator.queue_messages(dlq_url)] == ["poison"]


def test_long_polling_is_woken_by_a_callback_message(
    emulator: CallbackEmulator, sqs: Any, queue_url: str
) -> None:
    import threading

    name = f"p-{uuid.uuid4().hex[:12]}"
    emulator.create_pipeline(name, _definition(queue_url))
    timer = threading.Timer(0.3, lambda: emulator.start_execution(name))
    started = time.monotonic()
    timer.start()
    try:
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=10)["Messages"]
    finally:
        timer.join()
    assert len(messages) == 1
    assert time.monotonic() - started < 5


def test_a_long_poll_is_answered_when_a_hidden_message_comes_back(sqs: Any, queue_url: str) -> None:
    """
    As SQS answers a long poll once a message is available: a poll that waits when a received
    message's visibility timeout ends gets it then, not at its next once-a-second look (moto's).
    """
    sqs.send_message(QueueUrl=queue_url, MessageBody="back")
    received = time.monotonic()
    assert len(sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=2)["Messages"]) == 1
    time.sleep(0.9)  # moto's looks would come at 1.9 and 2.9 s
    messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=10)["Messages"]
    assert [m["Body"] for m in messages] == ["back"]
    assert time.monotonic() - received < 2.7


def test_a_poller_that_hands_a_message_back_does_not_always_get_it_again(
    emulator: CallbackEmulator, queue_url: str
) -> None:
    """
    Two pollers long-poll one queue; one hands the message back for whole seconds and polls again
    at once. The one that waited already gets it too: its wait does not tick out of step.
    """
    import threading

    waiting = emulator.client("sqs", config=NO_RETRY)
    handing_back = emulator.client("sqs", config=NO_RETRY)
    handing_back.send_message(QueueUrl=queue_url, MessageBody="shared")
    got = {"waiting": 0, "handing_back": 0}
    done = threading.Event()

    def wait() -> None:
        while not done.is_set():
            for m in waiting.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2).get("Messages", []):
                got["waiting"] += 1
                waiting.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=1
                )

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        while got["handing_back"] < 10:
            for m in handing_back.receive_message(QueueUrl=queue_url, WaitTimeSeconds=20).get("Messages", []):
                got["handing_back"] += 1
                handing_back.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=1
                )
    finally:
        done.set()
        thread.join(5)
    # With moto's once-a-second looks the poller that handed it back got it every time; evenly,
    # the waiting one would miss all of 10 rounds one time in a thousand.
    assert got["waiting"] >= 1, got


def test_a_waiting_long_poll_is_answered_when_a_message_is_handed_back_at_once(
    emulator: CallbackEmulator, queue_url: str
) -> None:
    """
    As SQS answers a waiting long poll as soon as a message is available: a poll that waits
    already when another poller hands a message back with no delay gets it then, not at its next
    once-a-second look (the poll started while the message was hidden for 30 s).
    """
    import threading

    waiting = emulator.client("sqs", config=NO_RETRY)
    handing_back = emulator.client("sqs", config=NO_RETRY)
    handing_back.send_message(QueueUrl=queue_url, MessageBody="shared")
    (message,) = handing_back.receive_message(QueueUrl=queue_url, VisibilityTimeout=30)["Messages"]
    answered: dict[str, Any] = {}

    def wait() -> None:
        answered["messages"] = waiting.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5).get(
            "Messages", []
        )
        answered["at"] = time.monotonic()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    time.sleep(0.3)  # the poll waits, looking at the queue from the next second on
    handed_back = time.monotonic()
    handing_back.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    thread.join(10)
    assert [m["Body"] for m in answered["messages"]] == ["shared"]
    # Its next look would have come about 0.7 s after the hand-back.
    assert answered["at"] - handed_back < 0.4


def test_requests_are_counted_by_the_queue_they_name(emulator: CallbackEmulator, sqs: Any) -> None:
    """
    Each SQS request is logged with the queue it names, in either protocol: another poller's
    long poll, answered while a test counts (an earlier test's, abandoned by its client, is
    answered up to 20 s later), is not counted for the test's queue.
    """
    import threading
    import urllib.request

    mine = emulator.create_queue(f"mine-{uuid.uuid4().hex[:12]}")
    other = emulator.create_queue(f"other-{uuid.uuid4().hex[:12]}")
    emulator.clear_requests()
    abandoned = threading.Thread(
        target=lambda: sqs.receive_message(QueueUrl=other, WaitTimeSeconds=2), daemon=True
    )
    abandoned.start()
    sqs.receive_message(QueueUrl=mine, WaitTimeSeconds=0)
    sqs.send_message(QueueUrl=mine, MessageBody="hello")
    # The query protocol: the queue in a form-encoded body.
    request = urllib.request.Request(
        mine,
        data=f"Action=ReceiveMessage&Version=2012-11-05&QueueUrl={mine}".encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/sqs/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert b"hello" in response.read()
    abandoned.join(10)

    assert emulator.request_counts("sqs", queue=mine) == {"ReceiveMessage": 2, "SendMessage": 1}
    name = mine.rsplit("/", 1)[-1]
    assert emulator.request_counts("sqs", queue=name) == {"ReceiveMessage": 2, "SendMessage": 1}
    assert emulator.request_counts("sqs", queue=other) == {"ReceiveMessage": 1}
    assert emulator.request_counts("sqs") == {"ReceiveMessage": 3, "SendMessage": 1}
    assert {r["queue"] for r in emulator.requests("sqs", queue=mine)} == {name}
    assert [r["action"] for r in emulator.requests(queue=other)] == ["ReceiveMessage"]
    created = f"new-{uuid.uuid4().hex[:12]}"
    sqs.create_queue(QueueName=created)
    sqs.list_queues()
    assert emulator.request_counts(queue=created) == {"CreateQueue": 1}
    assert [r["queue"] for r in emulator.requests("sqs") if r["action"] == "ListQueues"] == [None]


def test_query_protocol_requests_are_logged_and_faulted_in_xml(
    emulator: CallbackEmulator, queue_url: str
) -> None:
    import urllib.error
    import urllib.request

    from botocore.parsers import create_parser

    def list_queues() -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"{emulator.endpoint_url}/",
            data=b"Action=ListQueues&Version=2012-11-05",
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/sqs/aws4_request, "
                "SignedHeaders=host, Signature=0",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = list_queues()
    assert status == 200
    assert queue_url.encode() in body
    emulator.inject_fault("sqs", "ListQueues", code="RequestThrottled", count=1)
    status, body = list_queues()
    parsed = create_parser("query").parse({"status_code": status, "headers": {}, "body": body}, None)
    assert (status, parsed["Error"]["Code"]) == (400, "RequestThrottled")
    assert [(r["action"], r["status"]) for r in emulator.requests("sqs")] == [
        ("ListQueues", 200),
        ("ListQueues", 400),
    ]
