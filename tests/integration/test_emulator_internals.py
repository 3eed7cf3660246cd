"""
What the emulator takes from inside moto and werkzeug: all of it in ``testing/_moto.py``, and
checked, so that a moto release that changes it fails with an error naming what changed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import subprocess
import sys
import textwrap
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.responses import SageMakerResponse
from moto.sqs.models import Message, Queue, SQSBackend

import airflow_sm_callback.testing as testing_package
from airflow_sm_callback.testing import CallbackEmulator
from airflow_sm_callback.testing._moto import (
    MOTO_WRITTEN_AGAINST,
    MotoCompatibilityError,
    MotoSurface,
    check_moto,
)

pytestmark = [pytest.mark.integration, pytest.mark.emulator]

TESTING_DIR = pathlib.Path(testing_package.__file__).parent
#: Modules of the emulator that may touch no private name of moto or werkzeug (``triggerer.py``
#: runs an Airflow triggerer and has nothing to do with moto).
EMULATOR_MODULES = sorted(p for p in TESTING_DIR.glob("*.py") if p.name not in ("_moto.py", "triggerer.py"))


# ---------------------------------------------------------------------- the installed moto


def test_installed_moto_passes_and_every_private_name_is_checked() -> None:
    checked = check_moto()
    for name in (
        "moto.sqs.models.Queue._messages",
        "moto.sqs.models.Queue.__class__",
        "moto.sqs.models.Queue.wait_for_messages",
        "moto.sqs.models.Queue._messages_lock",
        "moto.sqs.models.Queue.add_message",
        "moto.sqs.models.Queue.last_purged_at",
        "moto.sqs.models.Message.visible_at / delayed_until",
        "werkzeug.serving.WSGIRequestHandler.run_wsgi",
    ):
        assert name in checked
    # Every private attribute _moto.py reads on moto's objects is one the check verifies.
    tree = ast.parse((TESTING_DIR / "_moto.py").read_text())
    # A name _moto.py assigns is still moto's when moto's objects have it (``self._messages = ``).
    probe = Queue("internals-probe", "us-east-1", DEFAULT_ACCOUNT_ID)
    own = {name for name in _defined_private_names(tree) if not hasattr(probe, name)}
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own
    }
    assert used == {"_messages", "_messages_lock"}
    assert all(any(f".{name}" in entry for entry in checked) for name in used)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: functions, methods, classes, ``self._x = ...``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in ("self", "cls")
            ):
                names.add(target.attr)
    return {name for name in names if _is_private(name)}


def test_no_other_module_touches_a_private_name_of_moto_or_werkzeug() -> None:
    trees = {path.name: ast.parse(path.read_text()) for path in EMULATOR_MODULES}
    own: set[str] = set()
    for tree in trees.values():
        own |= _defined_private_names(tree)
    offences: list[str] = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
                offences.append(f"{name}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("moto", "werkzeug"):
                offences.extend(
                    f"{name}:{node.lineno}: import {alias.name}"
                    for alias in node.names
                    if _is_private(alias.name)
                )
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "__class__" for t in node.targets
            ):
                offences.append(f"{name}:{node.lineno}: assigns __class__")
    assert offences == []


# ---------------------------------------------------------------------- a changed moto


class QueueWithoutMessages(Queue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._messages


class QueueWithoutMessagesLock(Queue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._messages_lock


class QueueWithoutWait(Queue):
    wait_for_messages = None


class QueueWithANewAttribute(Queue):
    @property
    def attributes(self) -> dict[str, Any]:
        return {**Queue.attributes.fget(self), "NewAttribute": "1"}  # type: ignore[attr-defined]


class MessageAlwaysVisible(Message):
    @property
    def visible(self) -> bool:
        return True


class BackendThatWaitsElsewhere(SQSBackend):
    def receive_message(self, *args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(0)
        return []


class BackendThatChangesVisibilityElsewhere(SQSBackend):
    def change_message_visibility_batch(self, queue_name: str, entries: list[dict[str, Any]]) -> Any:
        return [], []


class BackendThatPurgesAnyway(SQSBackend):
    def purge_queue(self, queue_name: str) -> None:
        self.get_queue(queue_name)


class ResponseWithoutParsedParams(SageMakerResponse):
    def __init__(self) -> None:
        super().__init__()
        self.automated_parameter_parsing = False


@pytest.mark.parametrize(
    ("surface", "name", "problem", "purpose"),
    [
        pytest.param(
            MotoSurface(queue=QueueWithoutMessages),
            "moto.sqs.models.Queue._messages",
            "a new queue has no _messages attribute",
            "FastScanQueue's scans",
            id="Queue._messages",
        ),
        pytest.param(
            MotoSurface(queue=QueueWithoutMessagesLock),
            "moto.sqs.models.Queue._messages_lock",
            "a new queue has no _messages_lock attribute",
            "the condition of a queue's long polls",
            id="Queue._messages_lock",
        ),
        pytest.param(
            MotoSurface(queue=QueueWithoutWait),
            "moto.sqs.models.Queue.wait_for_messages",
            "missing",
            "while a long poll waits",
            id="Queue.wait_for_messages",
        ),
        pytest.param(
            MotoSurface(queue=QueueWithANewAttribute),
            "moto.sqs.models.Queue.attributes (moto's answer)",
            "differ in NewAttribute",
            "answers GetQueueAttributes with FastScanQueue's copy",
            id="Queue.attributes",
        ),
        pytest.param(
            MotoSurface(message=MessageAlwaysVisible),
            "moto.sqs.models.Message.visible_at / delayed_until",
            "no longer follow visible_at and delayed_until",
            "the way Message.visible and Message.delayed do",
            id="Message.visible_at",
        ),
        pytest.param(
            MotoSurface(sqs_backend=BackendThatWaitsElsewhere),
            "moto.sqs.models.SQSBackend.receive_message",
            "no longer waits in Queue.wait_for_messages",
            "stall every other request",
            id="SQSBackend.receive_message",
        ),
        pytest.param(
            MotoSurface(sqs_backend=BackendThatChangesVisibilityElsewhere),
            "moto.sqs.models.SQSBackend.change_message_visibility",
            "change_message_visibility_batch no longer calls it",
            "receipt-handle index",
            id="SQSBackend.change_message_visibility",
        ),
        pytest.param(
            MotoSurface(sqs_backend=BackendThatPurgesAnyway),
            "moto.sqs.models.Queue.last_purged_at",
            "no longer keeps its limit in Queue.last_purged_at",
            "without its once-a-minute limit",
            id="Queue.last_purged_at",
        ),
        pytest.param(
            MotoSurface(sagemaker_response=ResponseWithoutParsedParams),
            "moto.sagemaker.responses.SageMakerResponse.params",
            "no longer parses its requests",
            "reads the SageMaker requests' parameters",
            id="SageMakerResponse.params",
        ),
        pytest.param(
            MotoSurface(sagemaker_url_paths={"{0}/$": object()}),
            "moto.sagemaker.urls.url_paths",
            "no longer routes to SageMakerResponse.dispatch",
            "puts CallbackSageMakerResponse.dispatch in their place",
            id="sagemaker.urls",
        ),
        pytest.param(
            MotoSurface(request_handler=BaseHTTPRequestHandler),
            "werkzeug.serving.WSGIRequestHandler.run_wsgi",
            "missing",
            "keep-alive request handler",
            id="WSGIRequestHandler.run_wsgi",
        ),
    ],
)
def test_a_changed_moto_fails_the_check_naming_what_changed(
    surface: MotoSurface, name: str, problem: str, purpose: str
) -> None:
    with pytest.raises(MotoCompatibilityError) as raised:
        check_moto(surface)
    message = str(raised.value)
    lines = [line for line in message.splitlines() if line.startswith(f"- {name}: ")]
    assert len(lines) == 1, message
    assert problem in lines[0]
    assert purpose in lines[0]
    assert f"moto {importlib.metadata.version('moto')} and werkzeug" in message
    assert f"written against moto {MOTO_WRITTEN_AGAINST}" in message
    assert "airflow_sm_callback/testing/_moto.py" in message


def test_a_server_on_a_changed_moto_refuses_to_start() -> None:
    # A user whose moto lost Queue.wait_for_messages gets the check's error from start(), not an
    # AttributeError in the first long poll.
    code = textwrap.dedent(
        """
        from moto.sqs.models import Queue
        del Queue.wait_for_messages

        from airflow_sm_callback.testing import CallbackEmulator
        from airflow_sm_callback.testing._moto import MotoCompatibilityError

        try:
            CallbackEmulator().start()
        except MotoCompatibilityError as exc:
            print(exc)
        else:
            raise SystemExit("the emulator started")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "- moto.sqs.models.Queue.wait_for_messages: missing." in result.stdout
    assert f"moto {importlib.metadata.version('moto')}" in result.stdout


# ---------------------------------------------------------------------- purging through moto


def test_purge_helper_leaves_moto_purge_limit_as_it_was(emulator: CallbackEmulator) -> None:
    sqs = emulator.client("sqs")
    queue_url = emulator.create_queue(f"purge-{uuid.uuid4().hex[:12]}")
    sqs.send_message(QueueUrl=queue_url, MessageBody="one")
    assert emulator.purge_queue(queue_url) == 1
    # The helper's purge did not start moto's minute: a PurgeQueue request still goes through ...
    sqs.send_message(QueueUrl=queue_url, MessageBody="two")
    sqs.purge_queue(QueueUrl=queue_url)
    assert emulator.queue_messages(queue_url) == []
    # ... the helper is not held up by that request's minute ...
    sqs.send_message(QueueUrl=queue_url, MessageBody="three")
    assert emulator.purge_queue(queue_url) == 1
    # ... and the request's minute still holds for the next request.
    with pytest.raises(ClientError) as raised:
        sqs.purge_queue(QueueUrl=queue_url)
    assert raised.value.response["Error"]["Code"] == "AWS.SimpleQueueService.PurgeQueueInProgress"
