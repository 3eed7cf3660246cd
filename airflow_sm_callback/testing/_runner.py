"""
Running steps: starting them, sending callback messages, timing the others, settling executions.

:class:`StepRunner` moves an :class:`~._execution.Execution` on: it starts every step that can
start (a ``Callback`` gets a token and one message on its queue, a ``Condition`` is decided, a
``Fail`` fails the execution, any other type succeeds at once or after ``step_delay_seconds`` on
a timer thread), again and again until nothing more starts, then settles the execution's
status. It also sends the ``Stopping`` messages of a stop. The engine calls it under its lock;
the timer threads take the same lock.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from airflow_sm_callback.protocol.expressions import to_text

from ._definition import ResolutionError, StepDef, evaluate
from ._execution import OPEN_STEP_STATUSES, Execution, StepRun, now

if TYPE_CHECKING:
    from ._settings import EngineSettings

__all__ = ["QueueSender", "StepRunner"]

#: Sends one message body to an SQS queue URL; the second argument is the region to assume
#: when the URL does not name one. Raises any exception to report that the send failed.
QueueSender = Callable[[str, str, str], None]

_TOKEN_ALPHABET: Final = string.ascii_letters + string.digits


class StepRunner:
    """
    Starts the steps of executions and keeps the callback tokens.

    :param send_message: puts a message body on a queue (see :data:`QueueSender`).
    :param lock: the engine's lock (a timer thread takes it before it finishes a step).
    :param executions: the engine's executions by ARN (a timer thread looks its execution up).
    :param settings: returns the settings in force.
    """

    def __init__(
        self,
        send_message: QueueSender,
        lock: threading.RLock,
        executions: Mapping[str, Execution],
        settings: Callable[[], EngineSettings],
    ) -> None:
        self._send = send_message
        self._lock = lock
        self._executions = executions
        self._settings = settings
        #: callback token -> (execution ARN, step name).
        self.tokens: dict[str, tuple[str, str]] = {}
        self._seq = 0
        self._closed = False

    def shutdown(self) -> None:
        """Cancel every pending step timer; no new timer starts (delayed steps finish at once)."""
        self._closed = True
        for execution in self._executions.values():
            for run in execution.runs.values():
                if run.timer is not None:
                    run.timer.cancel()
                    run.timer = None

    def advance(self, execution: Execution) -> None:
        """Start every step that can start, repeatedly, then settle the execution's status."""
        progressed = True
        while progressed and not execution.failed and not execution.stop_requested:
            progressed = False
            for step in list(execution.startable()):
                if execution.failed or execution.stop_requested:
                    break
                self._start_step(execution, step)
                progressed = True
        execution.settle()

    def stop(self, execution: Execution) -> None:
        """
        Stop a running execution: callback steps become ``Stopping`` (and get a second message),
        other open steps ``Stopped``; then settle.
        """
        execution.stop_requested = True
        execution.status = "Stopping"
        execution.touch()
        for run in sorted(execution.runs.values(), key=lambda r: r.seq):
            if run.status not in OPEN_STEP_STATUSES:
                continue
            if run.type == "Callback":
                run.status = "Stopping"
                self._send_callback_message(execution, run, "Stopping")
            else:
                run.close("Stopped")
        execution.settle()

    # ------------------------------------------------------------------ one step

    def _start_step(self, execution: Execution, step: StepDef) -> None:
        self._seq += 1
        run = StepRun(name=step.name, type=step.type, seq=self._seq, status="Starting", start_time=now())
        execution.runs[step.name] = run
        execution.touch()
        try:
            if step.type == "Callback":
                self._start_callback(execution, step, run)
            elif step.type == "Condition":
                arguments = step.body.get("Arguments") or {}
                outcome = all(
                    evaluate(condition, execution.resolve) for condition in arguments.get("Conditions") or []
                )
                run.outcome = outcome
                run.close("Succeeded")
            elif step.type == "Fail":
                arguments = step.body.get("Arguments") or {}
                message = execution.resolve(arguments.get("ErrorMessage", ""))
                text = to_text(message)
                run.error_message = text
                run.close("Failed", text)
                execution.fail(text)
            else:
                delay = self._settings().step_delay_seconds
                if delay > 0 and not self._closed:
                    run.status = "Executing"
                    timer = threading.Timer(delay, self._finish_delayed, args=(execution.arn, step.name))
                    timer.daemon = True
                    run.timer = timer
                    timer.start()
                else:
                    run.close("Succeeded")
        except ResolutionError as exc:
            run.close("Failed", str(exc))
            execution.fail(f"Step {step.name} failed: {exc}")

    def _finish_delayed(self, arn: str, step_name: str) -> None:
        with self._lock:
            execution = self._executions.get(arn)
            if execution is None:
                return
            run = execution.runs.get(step_name)
            if run is None or run.status != "Executing":
                return
            run.timer = None
            run.close("Succeeded")
            execution.touch()
            self.advance(execution)

    # ------------------------------------------------------------------ callback steps

    def _start_callback(self, execution: Execution, step: StepDef, run: StepRun) -> None:
        arguments = execution.resolve(step.body.get("Arguments") or {})
        if not isinstance(arguments, dict):
            raise ResolutionError("Arguments of a callback step must be an object")
        queue_url = execution.resolve(step.body.get("SqsQueueUrl"))
        if not isinstance(queue_url, str) or not queue_url:
            raise ResolutionError("SqsQueueUrl did not resolve to a URL")
        run.arguments = arguments
        run.queue_url = queue_url
        run.token = self._new_token()
        self.tokens[run.token] = (execution.arn, run.name)
        run.status = "Executing"
        try:
            self._send_callback_message(execution, run, "Executing", raise_errors=True)
        except Exception as exc:
            raise ResolutionError(f"could not send the callback message to {queue_url}: {exc}") from None

    def _send_callback_message(
        self, execution: Execution, run: StepRun, status: str, *, raise_errors: bool = False
    ) -> None:
        body = json.dumps(
            {
                "token": run.token,
                "pipelineExecutionArn": execution.arn,
                "arguments": run.arguments or {},
                "status": status,
            }
        )
        try:
            self._send(run.queue_url or "", body, execution.region)
        except Exception:
            if raise_errors:
                raise

    def _new_token(self) -> str:
        while True:
            token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(10))
            if token not in self.tokens:
                return token
