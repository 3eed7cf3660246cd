"""
A person approves or rejects a callback step from Airflow's UI: SageMakerCallbackApprovalOperator (Airflow 3.1 and later).

Built on Airflow's human-in-the-loop tasks (the standard provider's ``HITLOperator``): the
request shows under Required Actions and is answered there or through the REST API, which
checks ``assigned_users`` and answers 409 to a second response. The form has one field per
output parameter the callback step declares, typed by its ``OutputType``. Approve closes the
step with ``SendPipelineExecutionStepSuccess`` and the entered outputs; Reject with
``SendPipelineExecutionStepFailure`` and a reason naming who rejected it. While the request is
open, :class:`~airflow_sm_callback.triggers.approval.SageMakerCallbackApprovalTrigger` waits
for the answer and watches the pipeline: a stopped pipeline's step is closed as failed, and no
approval is sent after the stop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from airflow_sm_callback import _airflow

if not _airflow.AIRFLOW_V_3_1_PLUS:
    raise ImportError(
        "SageMakerCallbackApprovalOperator needs Airflow 3.1 or newer: it is built on Airflow's "
        f"human-in-the-loop tasks, which Airflow {'.'.join(map(str, _airflow.AIRFLOW_VERSION))} does not have"
    )

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

from airflow_sm_callback._airflow import AirflowException, AirflowSkipException
from airflow_sm_callback.links.callback import execution_console_url
from airflow_sm_callback.operators.callback import _CallbackStepOperator
from airflow_sm_callback.protocol.message import parse_execution_arn
from airflow_sm_callback.protocol.outputs import (
    MAX_OUTPUT_VALUE,
    InvalidOutputParameters,
    OutputType,
    coerce_output_value,
    encode_output_parameters,
)
from airflow_sm_callback.protocol.tokens import Outcome, truncate_failure_reason
from airflow_sm_callback.triggers.approval import STOPPING_STATUSES, SageMakerCallbackApprovalTrigger
from airflow_sm_callback.utils.aws import aws_template_fields
from airflow_sm_callback.utils.closing import StepTarget, request_token_for
from airflow_sm_callback.utils.rendering import callback_from, rendered_mapping, rendered_optional

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["APPROVE", "REJECT", "SageMakerCallbackApprovalOperator"]

APPROVE: Final = "Approve"
REJECT: Final = "Reject"
#: The form field of a comment, which is never sent as an output (in a rejection's reason).
COMMENT: Final = "comment"
#: What an output can be filled from without asking.
RESPONSE_FIELDS: Final = ("responded_by", "responded_at")
#: The JSON schema of a form field for each declared output type.
_SCHEMAS: Final[dict[OutputType, dict[str, Any]]] = {
    OutputType.STRING: {"type": "string", "maxLength": MAX_OUTPUT_VALUE},
    OutputType.INTEGER: {"type": "integer"},
    OutputType.FLOAT: {"type": "number"},
    OutputType.BOOLEAN: {"type": "boolean"},
}
STOPPED_WHILE_AWAITED: Final = (
    "The pipeline execution was stopped (StopPipelineExecution) while its approval was awaited in "
    "Airflow; the callback step was closed without an approval."
)


def _form_value(name: str, value: Any, declared: OutputType) -> Any:
    """A default output value as the form shows it, checked against the declared type."""
    text = coerce_output_value(name, value, declared)
    if declared is OutputType.INTEGER:
        return int(text)
    if declared is OutputType.FLOAT:
        return float(text)
    if declared is OutputType.BOOLEAN:
        return text == "true"
    return text


class SageMakerCallbackApprovalOperator(_CallbackStepOperator, HITLOperator):
    """
    Ask a person to approve or reject a callback step, in Airflow's UI (Required Actions) or REST API.

    Which step: ``callback`` (the sensor's XCom, e.g. ``wait.output``), or ``callback_token`` with
    ``pipeline_execution_arn``, or ``pipeline_execution_arn`` with ``callback_step_name``. The
    form has one field per output parameter the step declares (``DescribePipelineDefinitionForExecution``),
    typed by its ``OutputType``, with ``output_defaults`` as defaults, and the free fields of
    ``form_fields`` (by default a ``comment``), which are never sent.

    * **Approve**: ``SendPipelineExecutionStepSuccess`` with the entered outputs, converted and
      checked as :class:`~airflow_sm_callback.operators.callback.SageMakerCallbackSuccessOperator`
      does; the outputs named in ``fill_from_response`` take who answered or when, unasked.
      Returns ``{"approved": True, ...}``.
    * **Reject**: ``SendPipelineExecutionStepFailure`` with ``Rejected by <name> in Airflow: <comment>``
      (cut to 256 characters). Returns ``{"approved": False, ...}``.
    * **No answer** within ``response_timeout``: ``default_outcome`` (``"approve"`` with the
      defaults, or ``"reject"``) on no one's behalf; without one, the step is closed as failed
      saying no one answered, and the task fails.
    * **The pipeline is stopped** while the request is open: within ``stop_check_interval``
      seconds the request is closed as rejected on no one's behalf (a later answer gets 409), the
      step is closed as failed (the stop can then complete) and the task is skipped. An answer
      given after the stop sends no approval.

    Idempotent: a retried task finds the step closed and asks nothing; the close requests carry
    the same ``ClientRequestToken`` on every try. The token never appears in the request, the form,
    the logs or the rendered fields.

    :param callback: the sensor's XCom dict. (templated)
    :param callback_token: the token, with ``pipeline_execution_arn``. (templated)
    :param pipeline_execution_arn: the execution. (templated)
    :param callback_step_name: the callback step's ``Name``. (templated)
    :param subject: the request's headline; by default it names the step and the pipeline. (templated)
    :param body: Markdown shown with the form; by default the pipeline, the execution, the step,
        the callback's arguments and a link to the execution in the SageMaker console. (templated)
    :param output_defaults: ``{output name: default}``, e.g. from an upstream task's XCom. (templated)
    :param fill_from_response: ``{output name: "responded_by" | "responded_at"}``: outputs filled
        with who answered (the user's name) or when (ISO 8601), not asked for.
    :param form_fields: free form fields (``Param``), never sent (default: an optional ``comment``,
        quoted in a rejection's reason).
    :param default_outcome: ``"approve"`` or ``"reject"`` when no one answered within
        ``response_timeout`` (``None``: the step is closed as failed).
    :param response_timeout: how long to wait for an answer.
    :param assigned_users: who may answer (``{"id": ..., "name": ...}``, one or a list).
    :param notifiers: notified when the request is made; their templates can use
        ``required_action_url``, the link to the request in Airflow's UI.
    :param stop_check_interval: seconds between two looks at the execution's status while waiting.
    :param aws_conn_id: The Airflow connection used for AWS credentials. (templated)
    :param region_name: AWS region; defaults to the connection's. (templated)
    :param verify: Whether to verify SSL certificates. (templated)
    :param botocore_config: botocore ``Config`` kwargs.
    """

    template_fields: Sequence[str] = aws_template_fields(
        "subject",
        "body",
        "callback",
        "callback_token",
        "pipeline_execution_arn",
        "callback_step_name",
        "output_defaults",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "callback": "json",
        "output_defaults": "json",
        "body": "md",
    }
    ui_color = "#fdf2d0"
    #: The form's fields (the standard provider's ``ParamsDict``).
    params: Any

    def __init__(
        self,
        *,
        callback: Any = None,
        callback_token: str | None = None,
        pipeline_execution_arn: str | None = None,
        callback_step_name: str | None = None,
        subject: str | None = None,
        body: str | None = None,
        output_defaults: Any = None,
        fill_from_response: Mapping[str, str] | None = None,
        form_fields: Mapping[str, Any] | None = None,
        default_outcome: Literal["approve", "reject"] | None = None,
        response_timeout: timedelta | None = None,
        stop_check_interval: float = 30.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if default_outcome not in (None, "approve", "reject"):
            raise ValueError(f"default_outcome must be 'approve', 'reject' or None, got {default_outcome!r}")
        fill = dict(fill_from_response or {})
        for name, field in fill.items():
            if field not in RESPONSE_FIELDS:
                raise ValueError(
                    f"fill_from_response[{name!r}] must be one of {', '.join(RESPONSE_FIELDS)}, got {field!r}"
                )
        super().__init__(
            callback=callback,
            callback_token=callback_token,
            pipeline_execution_arn=pipeline_execution_arn,
            callback_step_name=callback_step_name,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            verify=verify,
            botocore_config=botocore_config,
            subject=subject or "",
            body=body,
            options=[APPROVE, REJECT],
            defaults=None
            if default_outcome is None
            else [APPROVE if default_outcome == "approve" else REJECT],
            multiple=False,
            response_timeout=response_timeout,
            **kwargs,
        )
        #: The free form fields.
        self.form_fields: dict[str, Any] = (
            dict(form_fields)
            if form_fields is not None
            else {
                COMMENT: Param(
                    None,
                    type=["null", "string"],
                    title="Comment",
                    description="Not sent as an output; quoted in a rejection's reason",
                )
            }
        )
        self.output_defaults = output_defaults
        self.fill_from_response = fill
        self.default_outcome = default_outcome
        self.stop_check_interval = stop_check_interval

    # -- the step ------------------------------------------------------------------------------

    def _target(self) -> tuple[StepTarget, str, str]:
        """The step to close, its execution and its name (each needed to build the form)."""
        target = self.target()
        if target is None:
            raise AirflowException(
                f"the callback step of {rendered_optional(self.pipeline_execution_arn)} has not started: "
                "nothing to approve"
            )
        arn = target.execution_arn or rendered_optional(self.pipeline_execution_arn)
        if not arn:
            raise ValueError(
                "an approval needs the execution to know the step's outputs: pass callback (the "
                "sensor's XCom) or pipeline_execution_arn"
            )
        step_name = target.step_name
        if step_name is None:
            step = self.hook.find_callback_step(arn, token=target.token)
            if step is None:
                raise AirflowException(f"no callback step of {arn} has the given token")
            step_name = step.name
        return target, arn, step_name

    def _asked(self, declared: Mapping[str, OutputType]) -> dict[str, OutputType]:
        """The declared outputs the form asks for (those not filled from the response)."""
        for name in self.fill_from_response:
            if name not in declared:
                raise InvalidOutputParameters(
                    f"fill_from_response names {name!r}, which the step does not declare "
                    f"(it declares {', '.join(sorted(declared)) or 'no outputs'})",
                    parameter=name,
                )
        return {name: kind for name, kind in declared.items() if name not in self.fill_from_response}

    def _form(self, declared: Mapping[str, OutputType]) -> dict[str, Param]:
        """One typed field per output asked for, then the free fields."""
        defaults = rendered_optional(self.output_defaults)
        if isinstance(defaults, str):
            defaults = rendered_mapping(defaults, "output_defaults")
        defaults = dict(defaults or {})
        asked = self._asked(declared)
        for name in defaults:
            if name not in asked:
                raise InvalidOutputParameters(
                    f"output_defaults names {name!r}, which the form does not ask for "
                    f"(it asks for {', '.join(sorted(asked)) or 'no outputs'})",
                    parameter=name,
                )
        form: dict[str, Param] = {}
        for name, kind in asked.items():
            field = {**_SCHEMAS[OutputType(kind)], "title": name, "description": f"Output parameter ({kind})"}
            if name in defaults and defaults[name] is not None:
                form[name] = Param(_form_value(name, defaults[name], OutputType(kind)), **field)
            else:
                if self.default_outcome == "approve":
                    raise InvalidOutputParameters(
                        f"default_outcome='approve' needs a default for every output asked for; {name!r} has none",
                        parameter=name,
                    )
                # Empty until the person fills it (a request cannot carry an unset value).
                form[name] = Param(None, **{**field, "type": [field["type"], "null"]})
        for name, value in self.form_fields.items():
            if name in form:
                raise ValueError(f"the form field {name!r} is also an output parameter of the step")
            form[name] = value if isinstance(value, Param) else Param(value)
        return form

    def _describe(self, target: StepTarget, arn: str, step_name: str) -> tuple[str, str]:
        """The default subject and body: pipeline, execution, step, arguments, console link."""
        _, _, pipeline, execution_id = parse_execution_arn(arn)
        subject = f"Approve callback step {step_name} of pipeline {pipeline}?"
        callback = rendered_optional(self.callback)
        if callback is not None:
            arguments: Mapping[str, Any] = callback_from(callback).arguments
        else:
            try:
                arguments = self.hook.resolve_step_arguments(arn, step_name)
            except Exception as err:  # shown without them
                self.log.info("Could not read the arguments of step %s: %s", step_name, err)
                arguments = {}
        lines = [
            f"SageMaker pipeline **{pipeline}**, execution `{execution_id}`, callback step **{step_name}**.",
            "",
            f"[Open the execution in the SageMaker console]({execution_console_url(arn)})",
        ]
        if arguments:
            lines += ["", "| argument | value |", "|---|---|"]
            lines += [f"| {name} | {value} |" for name, value in arguments.items()]
        lines += ["", "Approve sends the outputs below to the step; Reject closes it as failed."]
        return subject, "\n".join(lines)

    # -- asking -------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        target, arn, step_name = self._target()
        self.persist_link(context, arn)
        step = self.hook.find_callback_step(arn, token=target.token)
        if step is not None and step.is_closed:
            # A retried task: the step was closed by an earlier try; nothing to ask.
            self.log.info("Callback step %s of %s is already %s: nothing to ask", step_name, arn, step.status)
            return {
                "approved": step.status == "Succeeded",
                "already_closed": True,
                "pipeline_execution_arn": arn,
            }
        declared = self.hook.get_output_types(arn, step_name)
        form = self._form(declared)
        self.params = type(self.params)(form)  # the standard provider's ParamsDict
        subject, body = self._describe(target, arn, step_name)
        # The request is stored and shown as it is: no token in it, whatever was templated.
        given_subject: str | None = getattr(self, "subject", None)
        given_body: str | None = getattr(self, "body", None)
        self.subject = _airflow.redact(given_subject or subject)
        self.body = _airflow.redact(given_body or body)
        ti = context["ti"]
        _airflow.upsert_hitl_detail(
            ti_id=ti.id,
            options=self.options,
            subject=self.subject,
            body=self.body,
            defaults=self.defaults,
            multiple=False,
            params=self.serialized_params,
            assigned_users=self.assigned_users,
        )
        self.log.info("Waiting for an approval of callback step %s of %s", step_name, arn)
        if self.notifiers:
            try:
                context["required_action_url"] = self.generate_link_to_ui(task_instance=ti)  # type: ignore[typeddict-unknown-key,unused-ignore]
            except ValueError as err:  # no [api] base_url
                self.log.info("No link to the request for the notifiers: %s", err)
            for notifier in self.notifiers:
                notifier(context)
        timeout = self.response_timeout.total_seconds() if self.response_timeout else None
        self.defer(
            trigger=SageMakerCallbackApprovalTrigger(
                ti_id=str(ti.id),
                execution_arn=arn,
                timeout_at=None if timeout is None else time.time() + timeout,
                default_options=self.defaults,
                default_params=self.params.dump(),
                stop_check_interval=self.stop_check_interval,
                **self._hook_parameters,
            ),
            method_name="execute_complete",
        )

    # -- the answer ---------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        target, arn, step_name = self._target()
        self.persist_link(context, arn)
        kind = event.get("kind", "response")  # Airflow 3.3 resumes with the response itself
        if kind == "stopped":
            self._close_failed(context, target, arn, STOPPED_WHILE_AWAITED)
            raise AirflowSkipException(
                f"the pipeline execution {arn} is {event.get('status')}: {STOPPED_WHILE_AWAITED}"
            )
        if kind == "timeout":
            waited = self.response_timeout or timedelta(0)
            reason = f"No one answered the approval request in Airflow within {waited}."
            self._close_failed(context, target, arn, reason)
            raise AirflowException(f"{reason} Callback step {step_name} of {arn} closed as failed.")
        status = self.hook.describe_execution(arn).get("PipelineExecutionStatus")
        if status in STOPPING_STATUSES:
            # Answered, but the pipeline was stopped meanwhile: no approval after the stop.
            self._close_failed(context, target, arn, STOPPED_WHILE_AWAITED)
            raise AirflowSkipException(f"the pipeline execution {arn} is {status}: {STOPPED_WHILE_AWAITED}")
        chosen = list(event.get("chosen_options") or [])
        params_input = dict(event.get("params_input") or {})
        user = event.get("responded_by_user")
        who = user.get("name") or user.get("id") if isinstance(user, Mapping) else None
        responded_at = event.get("responded_at")
        if isinstance(responded_at, datetime):
            responded_at = responded_at.isoformat()
        answer = {
            "responded_by": who,
            "responded_at": responded_at,
            "timed_out": bool(event.get("timedout")),
            "pipeline_execution_arn": arn,
            "callback_step_name": step_name,
        }
        self.validate_chosen_options(chosen)
        if chosen != [APPROVE]:
            comment = params_input.get(COMMENT)
            by = f"Rejected by {who} in Airflow" if who else "Rejected in Airflow (no one answered in time)"
            reason = by + (f": {comment}" if comment else "")
            self._close_failed(context, target, arn, reason)
            return {"approved": False, "reason": truncate_failure_reason(reason), **answer}
        declared = self.hook.get_output_types(arn, step_name)
        outputs = {name: params_input.get(name) for name in self._asked(declared)}
        for name, field in self.fill_from_response.items():
            outputs[name] = answer[field] if answer[field] is not None else "airflow (no one answered)"
        try:
            encoded = encode_output_parameters(outputs, declared)
        except InvalidOutputParameters as err:
            # The answer cannot be sent; the step is not left open.
            self._close_failed(
                context, target, arn, f"Approved by {who} in Airflow with invalid outputs: {err}"
            )
            raise
        arn = self.hook.send_step_success(
            target.token,
            encoded,
            client_request_token=request_token_for(context, target.token, Outcome.SUCCESS),
            execution_arn=arn,
        )
        self.log.info(
            "Callback step %s of %s approved by %s", step_name, arn, who or "no one (timeout default)"
        )
        return {"approved": True, "output_parameters": {p["Name"]: p["Value"] for p in encoded}, **answer}

    def _close_failed(self, context: Context, target: StepTarget, arn: str, reason: str) -> None:
        step = self.hook.find_callback_step(arn, token=target.token)
        if step is not None and step.is_closed:
            self.log.info("Callback step %s of %s is already %s", step.name, arn, step.status)
            return
        self.hook.send_step_failure(
            target.token,
            reason,
            client_request_token=request_token_for(context, target.token, Outcome.FAILURE),
            execution_arn=arn,
        )
        self.log.warning("Closed callback step of %s as failed: %s", arn, truncate_failure_reason(reason))
