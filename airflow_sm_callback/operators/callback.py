"""Close a SageMaker Pipelines callback step: success with output parameters, or failure with a reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_sm_callback._airflow import AirflowException, TriggerRule
from airflow_sm_callback.links.callback import SageMakerPipelineExecutionLink, persist_execution_link
from airflow_sm_callback.protocol.outputs import InvalidOutputParameters, OutputType, encode_output_parameters
from airflow_sm_callback.protocol.tokens import Outcome
from airflow_sm_callback.utils.aws import AwsCallbackMixin, aws_template_fields
from airflow_sm_callback.utils.closing import StepTarget, request_token_for, resolve_target
from airflow_sm_callback.utils.rendering import rendered_mapping, rendered_optional

if TYPE_CHECKING:
    from airflow.sdk import Context

_CLOSE_TEMPLATE_FIELDS = ("callback", "callback_token", "pipeline_execution_arn", "callback_step_name")


def merge_output_parameters(value: Any) -> dict[str, Any]:
    """
    One ``{name: value}`` mapping from what a user passes as output parameters.

    Accepts a mapping; the protocol's list of ``{"Name", "Value"}``; or a list of mappings (for
    example the return values of several upstream tasks, as ``XComArg``), merged in order.
    Rendered text of a dict is parsed back.

    :raises InvalidOutputParameters: when a name is given twice, or a part is not a mapping.
    """
    value = rendered_optional(value)
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = rendered_mapping(value, "output_parameters")
        except ValueError as err:
            raise InvalidOutputParameters(str(err)) from None
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, Sequence):
        raise InvalidOutputParameters(
            f"output_parameters must be a dict or a list of dicts, got {type(value).__name__}"
        )
    if value and all(isinstance(item, Mapping) and set(item) == {"Name", "Value"} for item in value):
        parts: list[Any] = [{item["Name"]: item["Value"]} for item in value]
    else:
        parts = list(value)
    merged: dict[str, Any] = {}
    for index, raw in enumerate(parts):
        part = rendered_optional(raw)
        if part is None:
            continue
        if isinstance(part, str):
            try:
                part = rendered_mapping(part, f"output_parameters[{index}]")
            except ValueError as err:
                raise InvalidOutputParameters(str(err)) from None
        if not isinstance(part, Mapping):
            raise InvalidOutputParameters(
                f"output_parameters[{index}] must be a dict of outputs, got {type(part).__name__}"
            )
        for name, item in part.items():
            if name in merged:
                raise InvalidOutputParameters(f"output parameter {name!r} is given twice", parameter=name)
            merged[name] = item
    return merged


class _CallbackStepOperator(AwsCallbackMixin, BaseOperator):
    """What both operators share: which step to close, the console link, the AWS connection."""

    operator_extra_links = (SageMakerPipelineExecutionLink(),)
    ui_color = "#e0f0d9"

    def __init__(
        self,
        *,
        callback: Any = None,
        callback_token: str | None = None,
        pipeline_execution_arn: str | None = None,
        callback_step_name: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_aws(aws_conn_id, region_name, verify, botocore_config)
        self.callback = callback
        self.callback_token = callback_token
        self.pipeline_execution_arn = pipeline_execution_arn
        self.callback_step_name = callback_step_name

    def target(self) -> StepTarget | None:
        return resolve_target(
            self.hook,
            callback=self.callback,
            token=self.callback_token,
            execution_arn=self.pipeline_execution_arn,
            step_name=self.callback_step_name,
        )

    def persist_link(self, context: Context, execution_arn: str | None) -> None:
        persist_execution_link(context, self, execution_arn)


class SageMakerCallbackSuccessOperator(_CallbackStepOperator):
    """
    Close a callback step as succeeded, with output parameters (``SendPipelineExecutionStepSuccess``).

    Which step: ``callback`` (the sensor's XCom dict, e.g. ``wait.output``), or ``callback_token``,
    or ``pipeline_execution_arn`` with ``callback_step_name`` (the token looked up).

    Values are converted to the type each output *declares* in the pipeline definition
    (``DescribePipelineDefinitionForExecution``), not guessed from Python: ``"7"``, ``"True"`` or
    ``"0.5"`` rendered by Jinja arrive as text and are sent as the declared ``Integer``,
    ``Boolean`` or ``Float``. A value that does not fit its type, an output the step does not
    declare, more than 50 outputs, a nested value or ``None`` fail the task before any close
    request, naming the output.

    Idempotent across retries: the ``ClientRequestToken`` is derived from the DAG, run, task, map
    index and token (not the try number), and a retry first checks whether the step is already
    closed. Returns the pipeline execution ARN; the task gets a link to the execution in the
    SageMaker console.

    :param callback: the sensor's XCom dict (or an asset event's extra). (templated)
    :param callback_token: the callback token, instead of ``callback``. (templated)
    :param pipeline_execution_arn: the execution; with ``callback_step_name`` it finds the token.
        (templated)
    :param callback_step_name: the callback step's ``Name`` in the definition. (templated)
    :param output_parameters: ``{name: value}``, the protocol's ``[{"Name", "Value"}]``, or a
        list of dicts merged in order, e.g. ``[score.output, {"report_uri": "..."}]`` (an
        ``XComArg`` keeps native types); a name given twice is an error. (templated)
    :param convert_to_declared_types: convert values to the declared output types (needs the
        execution, from ``callback`` or ``pipeline_execution_arn``); without it values are
        encoded from their Python type.
    :param aws_conn_id: The Airflow connection used for AWS credentials. (templated)
    :param region_name: AWS region; defaults to the connection's. (templated)
    :param verify: Whether to verify SSL certificates. (templated)
    :param botocore_config: botocore ``Config`` kwargs.
    """

    template_fields: Sequence[str] = aws_template_fields(*_CLOSE_TEMPLATE_FIELDS, "output_parameters")
    template_fields_renderers: ClassVar[dict[str, str]] = {"output_parameters": "json", "callback": "json"}

    def __init__(
        self,
        *,
        output_parameters: Any = None,
        convert_to_declared_types: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_parameters = output_parameters
        self.convert_to_declared_types = convert_to_declared_types

    def declared_types(self, target: StepTarget) -> dict[str, OutputType] | None:
        """The step's declared outputs, or ``None`` when conversion is off or the execution is unknown."""
        if not self.convert_to_declared_types or not target.execution_arn:
            if self.convert_to_declared_types:
                self.log.warning(
                    "The execution is unknown (only a token was given): output values are encoded "
                    "from their Python types, not converted to the declared types"
                )
            return None
        step_name = target.step_name
        if step_name is None:
            step = self.hook.find_callback_step(target.execution_arn, token=target.token)
            step_name = step.name if step else None
        return self.hook.get_output_types(target.execution_arn, step_name)

    def execute(self, context: Context) -> str:
        target = self.target()
        if target is None:
            raise AirflowException(
                f"the callback step of {self.pipeline_execution_arn} has not started: nothing to close"
            )
        outputs = merge_output_parameters(self.output_parameters)
        # Everything is validated here, before the close request.
        encoded = encode_output_parameters(outputs, self.declared_types(target))
        arn = target.execution_arn
        if arn and (context["ti"].try_number or 1) > 1:
            step = self.hook.find_callback_step(arn, token=target.token)
            if step is not None and step.status == "Succeeded":
                self.log.info("Callback step %s of %s was already closed as succeeded", step.name, arn)
                self.persist_link(context, arn)
                return arn
        arn = self.hook.send_step_success(
            target.token,
            encoded,
            client_request_token=request_token_for(context, target.token, Outcome.SUCCESS),
            execution_arn=arn,
        )
        self.log.info(
            "Closed callback step %s of %s as succeeded with %s",
            target.step_name or "",
            arn,
            ", ".join(f"{p['Name']}={p['Value']}" for p in encoded) or "no outputs",
        )
        self.persist_link(context, arn)
        return arn


class SageMakerCallbackFailureOperator(_CallbackStepOperator):
    """
    Close a callback step as failed (``SendPipelineExecutionStepFailure``) when the work failed.

    Runs by default when any upstream task failed (``trigger_rule="one_failed"``). Which step:
    ``callback`` (the sensor's XCom, preferably as ``"{{ ti.xcom_pull(task_ids='wait') }}"``,
    which renders to nothing when the sensor failed), else ``callback_token``, else
    ``pipeline_execution_arn`` with ``callback_step_name``, so it works even when the sensor
    itself failed. A step that is already closed (either way) is left as it is. When the step has
    not started, ``stop_execution_if_not_started=True`` stops the execution instead.

    :param reason: the failure reason (cut to 256 characters, the start kept); by default it names
        the tasks of this run that failed. (templated)
    :param stop_execution_if_not_started: stop the execution (``StopPipelineExecution``) when its
        callback step has not started yet.
    :param callback: the sensor's XCom dict. (templated)
    :param callback_token: the callback token. (templated)
    :param pipeline_execution_arn: the execution. (templated)
    :param callback_step_name: the callback step's ``Name``. (templated)
    :param aws_conn_id: The Airflow connection used for AWS credentials. (templated)
    :param region_name: AWS region; defaults to the connection's. (templated)
    :param verify: Whether to verify SSL certificates. (templated)
    :param botocore_config: botocore ``Config`` kwargs.
    """

    template_fields: Sequence[str] = aws_template_fields(*_CLOSE_TEMPLATE_FIELDS, "reason")
    ui_color = "#f4d9d9"

    def __init__(
        self,
        *,
        reason: str | None = None,
        stop_execution_if_not_started: bool = False,
        trigger_rule: str = TriggerRule.ONE_FAILED,
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.reason = reason
        self.stop_execution_if_not_started = stop_execution_if_not_started

    def default_reason(self, context: Context) -> str:
        """``Airflow tasks failed: a, b (DAG d, run r)``: the upstream tasks (at any depth) that failed."""
        ti = context["ti"]
        failed: list[str] = []
        try:
            upstream = set(self.get_flat_relative_ids(upstream=True))
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=sorted(upstream), run_ids=[ti.run_id])
            failed = sorted(
                task
                for task, state in (states.get(ti.run_id) or {}).items()
                if state == "failed" and task in upstream
            )
        except Exception as err:
            self.log.info("Could not read the states of this run's tasks: %s", err)
        names = ", ".join(failed) if failed else "an upstream task"
        return f"Airflow tasks failed: {names} (DAG {ti.dag_id}, run {ti.run_id})."

    def execute(self, context: Context) -> str | None:
        target = self.target()
        arn = rendered_optional(self.pipeline_execution_arn)
        if target is None:
            if self.stop_execution_if_not_started and arn:
                if self.hook.describe_execution(arn).get("PipelineExecutionStatus") == "Executing":
                    self.hook.stop_execution(arn)
                    self.log.warning("The callback step of %s had not started: stopped the execution", arn)
            else:
                self.log.warning("The callback step of %s has not started: nothing to close", arn)
            self.persist_link(context, arn)
            return arn
        arn = target.execution_arn or arn
        if arn:
            step = self.hook.find_callback_step(arn, token=target.token)
            if step is not None and step.is_closed:
                self.log.info(
                    "Callback step %s of %s is already %s: nothing to do", step.name, arn, step.status
                )
                self.persist_link(context, arn)
                return arn
        reason = rendered_optional(self.reason) or self.default_reason(context)
        arn = self.hook.send_step_failure(
            target.token,
            reason,
            client_request_token=request_token_for(context, target.token, Outcome.FAILURE),
            execution_arn=arn,
        )
        self.log.warning("Closed callback step %s of %s as failed: %s", target.step_name or "", arn, reason)
        self.persist_link(context, arn)
        return arn
