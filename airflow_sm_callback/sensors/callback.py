"""SageMakerCallbackSensor: wait for this run's callback on a queue that many runs share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_sm_callback import _airflow
from airflow_sm_callback._airflow import AirflowException, AirflowSensorTimeout, AirflowSkipException, conf
from airflow_sm_callback.protocol.matching import CallbackMatcher
from airflow_sm_callback.protocol.message import CallbackMessage, CallbackStatus
from airflow_sm_callback.protocol.steps import AmbiguousCallbackStep
from airflow_sm_callback.protocol.tokens import Outcome, mask_token
from airflow_sm_callback.utils.aws import AwsCallbackMixin, aws_template_fields
from airflow_sm_callback.utils.closing import STOPPED_BEFORE_WORK, request_token_for
from airflow_sm_callback.utils.rendering import rendered_mapping, rendered_optional
from airflow_sm_callback.utils.settings import resume_hold as _resume_hold

if TYPE_CHECKING:
    from airflow.sdk import Context


class SageMakerCallbackSensor(AwsCallbackMixin, BaseSensorOperator):
    """
    Wait for the callback of *this* run on an SQS queue that many runs share.

    Every criterion given must hold: ``pipeline_execution_arn`` (usually
    ``"{{ ti.xcom_pull(task_ids='start_pipeline') }}"``), ``pipeline_name``,
    ``callback_step_name`` and ``arguments``. Messages this sensor does not want are handed back
    at once for their own waiters; the wanted message is deleted only after its callback was
    pushed to XCom (``return_value``), so a crash in between loses nothing.

    The result (XCom ``return_value``) is a JSON dict: ``token``, ``pipeline_execution_arn``,
    ``pipeline_name``, ``execution_id``, ``step_name``, ``arguments``, ``status``,
    ``message_id``, ``receive_count``, ``sent_at`` and ``queue_url``. The token is masked in logs
    and rendered templates; it is stored in XCom by design (the closing task needs it).

    On ``Stopping`` (``StopPipelineExecution`` before the callback was handed on: the
    ``Stopping`` message, or in poke and reschedule mode the step or execution looked up at
    hand-off) the sensor closes the step as failed, so the stop completes, and skips:
    downstream work does not start. A callback a trigger claimed is handed on without AWS
    requests.

    **Timeouts** take one path in every mode. The wait ends ``timeout`` seconds after it began
    (the first try's first poke in ``reschedule`` mode, the deferral in deferrable mode), where
    the sensor itself notices it: the trigger fires a ``timeout`` event at that deadline
    (wherever it runs, ``airflow dags test`` included; the deferral has no Airflow timeout of its
    own), and in poke and reschedule mode the poke that finds nothing after it raises.
    Either way :meth:`timed_out` acts: with ``on_timeout="fail_step"`` (default) a callback step
    that is already executing is closed as failed with a reason saying the Airflow wait timed
    out; if no callback step has started and ``stop_execution_on_timeout`` is set, the
    execution is stopped so no step opens later with nobody waiting (both need
    ``pipeline_execution_arn``). Then the task fails with ``AirflowSensorTimeout``, which
    Airflow turns into a skip with ``soft_fail``.

    A retried or cleared run (try number above 1), or a deferrable sensor that Airflow
    restarted without its trigger event, finds its token with ``ListPipelineExecutionSteps``
    when the execution is known; otherwise its callback's message, kept hidden until the task
    deletes it, comes back when ``handoff_visibility`` ends (at once in the same triggerer).

    :param queue_url: the SQS queue the callback step sends to. (templated)
    :param pipeline_execution_arn: wait for a callback of this execution. (templated)
    :param pipeline_name: wait for a callback of this pipeline. (templated)
    :param callback_step_name: the callback step's ``Name`` in the pipeline definition, for
        pipelines with several callback steps (mapped from the token with
        ``ListPipelineExecutionSteps``, once per token). (templated)
    :param arguments: argument values the callback must carry, e.g. ``{"step_name": "score"}``;
        a string matches a number or boolean by its text. (templated)
    :param deferrable: wait in the triggerer, costing no worker slot (default from
        ``[operators] default_deferrable``).
    :param on_timeout: ``"fail_step"`` closes an executing callback step as failed when the wait
        times out; ``"none"`` leaves it.
    :param stop_execution_on_timeout: on timeout, stop the execution when its callback step has
        not started yet.
    :param wait_time_seconds: long-poll time of one receive in poke and reschedule mode (default
        20 in poke mode, 5 in reschedule mode).
    :param resume_hold: seconds after deferring before the trigger may resume the task (a
        callback that arrives sooner is claimed at once and held): it keeps Airflow's scheduler
        from failing a task that resumes too soon (see
        :mod:`airflow_sm_callback.utils.settings`). Default: ``[sagemaker_callback]
        resume_hold``, else the default measured for this Airflow version and executor.
    :param handoff_visibility: seconds the matched message stays hidden while it is handed to
        the task: from the trigger event to ``execute_complete`` in deferrable mode, from the
        receive to the XCom push in poke mode. A task that Airflow restarts without its event
        (and that cannot recover the token from the execution) receives it again after this.
    :param aws_conn_id: The Airflow connection used for AWS credentials. (templated)
    :param region_name: AWS region; defaults to the connection's. (templated)
    :param verify: Whether to verify SSL certificates. (templated)
    :param botocore_config: botocore ``Config`` kwargs (retries, timeouts).
    """

    template_fields: Sequence[str] = aws_template_fields(
        "queue_url",
        "pipeline_execution_arn",
        "pipeline_name",
        "callback_step_name",
        "arguments",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"arguments": "json"}
    ui_color = "#c5e6f2"

    def __init__(
        self,
        *,
        queue_url: str,
        pipeline_execution_arn: str | None = None,
        pipeline_name: str | None = None,
        callback_step_name: str | None = None,
        arguments: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        on_timeout: Literal["fail_step", "none"] = "fail_step",
        stop_execution_on_timeout: bool = False,
        wait_time_seconds: int | None = None,
        handoff_visibility: int = 900,
        resume_hold: float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_timeout not in ("fail_step", "none"):
            raise ValueError(f"on_timeout must be 'fail_step' or 'none', got {on_timeout!r}")
        if resume_hold is not None:
            _resume_hold(resume_hold)  # a bad value fails the DAG file's parse, naming it
        self._init_aws(aws_conn_id, region_name, verify, botocore_config)
        self.queue_url = queue_url
        self.pipeline_execution_arn = pipeline_execution_arn
        self.pipeline_name = pipeline_name
        self.callback_step_name = callback_step_name
        self.arguments = arguments or {}
        self.deferrable = deferrable
        self.on_timeout = on_timeout
        self.stop_execution_on_timeout = stop_execution_on_timeout
        self.wait_time_seconds = wait_time_seconds
        self.handoff_visibility = handoff_visibility
        self.resume_hold = resume_hold
        self._recovery_done = False
        #: UNIX time the wait began (poke and reschedule mode; see :meth:`timed_out`).
        self._wait_began = time.time()

    # -- what to wait for -----------------------------------------------------------------------

    def matcher(self) -> CallbackMatcher:
        """The rendered criteria; raises :class:`ValueError` naming what is wrong."""
        return CallbackMatcher(
            pipeline_execution_arn=rendered_optional(self.pipeline_execution_arn),
            pipeline_name=rendered_optional(self.pipeline_name),
            step_name=rendered_optional(self.callback_step_name),
            arguments=rendered_mapping(self.arguments, "arguments"),
        )

    def _wait_time(self) -> int:
        if self.wait_time_seconds is not None:
            return max(0, min(20, int(self.wait_time_seconds)))
        return 5 if self.reschedule else 20

    # -- execute --------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        matcher = self.matcher()
        self.log.info("Waiting on %s for the callback of %s", self.queue_url, matcher.describe())
        if not self.deferrable:
            self._wait_began = self._began(context)
            if self.reschedule:
                context = _airflow.reschedule_context(context)
            return super().execute(context)
        # Poke once, quickly, before deferring: the callback may already be there.
        result = self._poke(context, matcher, wait_time_seconds=0)
        if result is not None:
            return result
        self._defer(matcher)

    def _began(self, context: Context) -> float:
        """
        When this wait began: the first try's first poke in reschedule mode, now otherwise. Never
        later than the base sensor's own start, so :meth:`timed_out` acts before it would.
        """
        if self.reschedule:
            first = _airflow.first_reschedule_date(context["ti"], context)
            if first is not None:
                return float(first.timestamp())
        return time.time()

    def _defer(self, matcher: CallbackMatcher) -> None:
        """
        Defer to the trigger, which fires a ``timeout`` event ``timeout`` seconds from now.

        The trigger is the only timer (the deferral has no timeout of Airflow's), so the timeout
        takes the same path wherever the trigger runs, ``airflow dags test`` included.
        """
        # Imported here: the trigger brings aiobotocore, which a resumed sensor does not need.
        from airflow_sm_callback.triggers.callback import SageMakerCallbackTrigger

        deadline = time.time() + self.timeout
        self.defer(
            trigger=SageMakerCallbackTrigger(
                queue_url=self.queue_url,
                matcher=matcher,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
                handoff_visibility=self.handoff_visibility,
                single_event=True,
                deadline=deadline,
                not_before=time.time() + _resume_hold(self.resume_hold),
            ),
            method_name="execute_complete",
            kwargs={"deadline": deadline},
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        result = self._poke(context, self.matcher(), wait_time_seconds=self._wait_time())
        if result is not None:
            return PokeReturnValue(is_done=True, xcom_value=result)
        if time.time() - self._wait_began >= self.timeout:
            raise self.timed_out(context)
        return False

    def _poke(
        self, context: Context, matcher: CallbackMatcher, *, wait_time_seconds: int
    ) -> dict[str, Any] | None:
        if not self._recovery_done:
            self._recovery_done = True
            recovered = self._recover(context, matcher)
            if recovered is not None:
                return recovered
        claim = self.hook.poll_for_callback(
            self.queue_url,
            matcher,
            wait_time_seconds=wait_time_seconds,
            handoff_visibility=self.handoff_visibility,
        )
        if claim is None:
            return None
        return self._hand_on(context, claim.callback, claim.receipt_handles)

    def execute_complete(self, context: Context, event: dict[str, Any], deadline: float | None = None) -> Any:
        """
        Take the trigger's event: hand the callback on; then its messages are deleted.

        The event carries the receipt handles of the callback's messages, which stay hidden
        (``handoff_visibility``) until the callback is in XCom, so that a task that Airflow
        restarts without its event still finds its callback. In a triggerer the shared stream
        deletes them (many at a time) once this task succeeded (``deleted_by="triggerer"``);
        otherwise this deletes them right after the XCom push. The callback is handed on as the
        trigger claimed it, without a step look-up (see ``check_step`` of :meth:`_hand_on`).
        ``deadline`` is the trigger's, kept in the deferral's arguments.
        """
        if not isinstance(event, dict) or event.get("status") not in ("success", "error", "timeout"):
            raise AirflowException(f"unexpected trigger event: {event!r}")
        if event["status"] == "error":
            raise AirflowException(event.get("message") or "the callback trigger failed")
        if event["status"] == "timeout":
            raise self.timed_out(context)
        callback = CallbackMessage.from_dict(event["callback"])
        return self._hand_on(
            context,
            callback,
            event.get("receipt_handles") or [],
            delete_when_handed_on=event.get("deleted_by", "task") == "task",
            check_step=False,
        )

    # -- hand-off -------------------------------------------------------------------------------

    def _hand_on(
        self,
        context: Context,
        callback: CallbackMessage,
        receipt_handles: Sequence[str],
        *,
        delete_when_handed_on: bool = True,
        check_step: bool = True,
    ) -> dict[str, Any] | None:
        """
        Check the callback against the step's state, push it to XCom, then delete its messages
        (or, when the triggerer deletes them, return it for Airflow's own push).

        :param check_step: look the step and the execution up first (``ListPipelineExecutionSteps``,
            ``DescribePipelineExecution``): a callback whose step is closed is stale, and one of a
            stopping execution closes its step as failed. ``False`` for a callback a trigger
            claimed: the stream already applied what it knows of the step, and a resumed task
            makes no AWS request (two SageMaker requests per callback, and the clients built in
            a fresh process, cost more than Airflow's own resume on a busy worker, and throttle
            in bursts). A ``Stopping`` callback is closed as failed either way.
        :param delete_when_handed_on: delete the messages after the XCom push, or after closing
            the step of a stopping execution (``False`` when the triggerer deletes them once
            this task succeeded or skipped); stale messages are deleted here either way (the
            task waits on, so the triggerer would not).
        :return: the XCom dict, or ``None`` when the message was stale (its step already closed).
        :raises AirflowSkipException: when the execution is stopping (the step is closed first).
        """
        self.hook.mask(callback.token)
        arn = callback.pipeline_execution_arn
        step = None
        if check_step:
            try:
                step = self.hook.find_callback_step(arn, token=callback.token)
            except Exception as err:
                self.log.warning("Could not look up the callback step of %s: %s", arn, err)
        if step is not None and step.is_closed:
            self.log.info(
                "Callback %s of %s is for step %s, already %s: deleting the stale message",
                mask_token(callback.token),
                arn,
                step.name,
                step.status,
            )
            self._delete(receipt_handles)
            return None
        if step is not None and callback.step_name is None:
            callback = callback.with_step_name(step.name)
        stopping = callback.is_stopping or (step is not None and step.status == "Stopping")
        if not stopping and check_step:
            try:
                stopping = self.hook.describe_execution(arn).get("PipelineExecutionStatus") == "Stopping"
            except Exception as err:
                self.log.warning("Could not describe %s: %s", arn, err)
        if stopping:
            self.hook.send_step_failure(
                callback.token,
                STOPPED_BEFORE_WORK,
                client_request_token=request_token_for(context, callback.token, Outcome.FAILURE),
                execution_arn=arn,
            )
            if delete_when_handed_on:
                self._delete(receipt_handles)
            step_named = f"callback step {callback.step_name}" if callback.step_name else "callback step"
            raise AirflowSkipException(
                f"{arn} is stopping: its {step_named} was closed as failed and the work was not started"
            )
        result = {**callback.to_dict(), "queue_url": self.queue_url}
        if delete_when_handed_on:
            # Push explicitly before deleting: Airflow pushes a returned value only after execute.
            # (When the triggerer deletes, it does so once the task succeeded, after Airflow's
            # own push of the returned value: one XCom write, not two.)
            context["ti"].xcom_push(key="return_value", value=result)
            self._delete(receipt_handles)
        self.log.info(
            "Callback %s of %s (step %s, %s) handed on",
            mask_token(callback.token),
            arn,
            callback.step_name,
            callback.status.value,
        )
        return result

    def _delete(self, receipt_handles: Sequence[str]) -> None:
        """
        Delete the callback's messages once it is handed on (or stale). Best effort: the hand-off
        is done, and a message left behind comes back and is deleted as stale by whoever receives
        it once its step is closed.
        """
        if not receipt_handles:
            return
        try:
            outcome = self.hook.complete_handoff(self.queue_url, receipt_handles)
        except Exception as err:
            self.log.warning(
                "Could not delete the callback's messages (%s); they will come back and be deleted as stale",
                err,
            )
            return
        if not outcome.ok:
            self.log.warning(
                "Some callback messages were not deleted; they will come back and be deleted as stale"
            )

    # -- recovery -------------------------------------------------------------------------------

    def _open_callbacks(self, matcher: CallbackMatcher) -> tuple[list[CallbackMessage], bool]:
        """
        The open callback steps of the known execution that ``matcher`` wants, as callbacks
        (token from ``ListPipelineExecutionSteps``, arguments rebuilt from the execution).

        :return: the callbacks, and whether any callback step (open or closed) that could be the
            one wanted has started.
        """
        arn = matcher.pipeline_execution_arn
        assert arn is not None
        steps = self.hook.list_callback_steps(arn)
        if matcher.step_name:
            steps = [s for s in steps if s.name == matcher.step_name]
        found = []
        for step in steps:
            if not (step.is_open and step.token):
                continue
            try:
                arguments = self.hook.resolve_step_arguments(arn, step.name)
            except Exception as err:
                self.log.warning("Could not rebuild the arguments of step %s: %s", step.name, err)
                if matcher.arguments:
                    continue  # whether it is the one wanted cannot be told
                arguments = {}
            callback = CallbackMessage.from_dict(
                {
                    "token": step.token,
                    "pipeline_execution_arn": arn,
                    "arguments": arguments,
                    "status": (
                        CallbackStatus.STOPPING.value
                        if step.status == "Stopping"
                        else CallbackStatus.EXECUTING.value
                    ),
                    "step_name": step.name,
                }
            )
            if matcher.matches(callback):
                found.append(callback)
        return found, bool(steps)

    def _restarted(self, context: Context) -> bool:
        """
        Whether this start may follow an earlier one that already took the callback: a retry or
        a cleared run (try above 1), or a deferrable sensor that Airflow rescheduled (it does so
        when a task fails to start, and a resumed task then starts again without its event).
        """
        if (getattr(context["ti"], "try_number", 1) or 1) > 1:
            return True
        return self.deferrable and int(context.get("task_reschedule_count", 0) or 0) > 0

    def _recover(self, context: Context, matcher: CallbackMatcher) -> dict[str, Any] | None:
        """On a retry, a cleared run or a restart, find the open callback step's token without the queue."""
        if not matcher.pipeline_execution_arn or not self._restarted(context):
            return None
        try:
            found, _ = self._open_callbacks(matcher)
        except Exception as err:
            self.log.warning("Could not list the steps of %s: %s", matcher.pipeline_execution_arn, err)
            return None
        if len(found) != 1:
            if found:
                self.log.info("Several open callback steps match; not recovering without callback_step_name")
            return None
        self.log.info(
            "Recovered the callback of step %s of %s from the execution's steps",
            found[0].step_name,
            found[0].pipeline_execution_arn,
        )
        return self._hand_on(context, found[0], [])

    # -- timeout --------------------------------------------------------------------------------

    def timed_out(self, context: Context) -> AirflowSensorTimeout:
        """
        The wait timed out: close an executing callback step as failed, or stop an execution
        whose step has not started (see the class docstring); return the exception to raise.
        """
        self._close_on_timeout(context)
        return AirflowSensorTimeout(
            f"The wait timed out: no callback arrived within the sensor's timeout of {self.timeout:.0f}s"
        )

    def _close_on_timeout(self, context: Context) -> None:
        try:
            matcher = self.matcher()
        except ValueError as err:
            self.log.error("The wait timed out with invalid criteria: %s", err)
            return
        arn = matcher.pipeline_execution_arn
        if not arn:
            self.log.warning("The wait timed out; without pipeline_execution_arn no step can be closed")
            return
        hook = self.hook
        try:
            found, started = self._open_callbacks(matcher)
            if len(found) > 1:
                raise AmbiguousCallbackStep(
                    f"{arn} has several open callback steps this sensor could mean; "
                    "set callback_step_name to close one on timeout"
                )
            if found and self.on_timeout == "fail_step":
                callback = found[0]
                reason = (
                    f"The Airflow wait for this callback timed out after {self.timeout:.0f}s "
                    f"(task {context['ti'].dag_id}.{context['ti'].task_id})."
                )
                hook.send_step_failure(
                    callback.token,
                    reason,
                    client_request_token=request_token_for(context, callback.token, Outcome.FAILURE),
                    execution_arn=arn,
                )
                self.log.warning(
                    "The wait timed out: closed callback step %s of %s as failed", callback.step_name, arn
                )
                return
            if not started and self.stop_execution_on_timeout:
                status = hook.describe_execution(arn).get("PipelineExecutionStatus")
                if status == "Executing":
                    hook.stop_execution(arn)
                    self.log.warning("The wait timed out before the callback step started: stopped %s", arn)
        except Exception as err:
            self.log.error("The wait timed out and the step could not be closed: %s", err)
