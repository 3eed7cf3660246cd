"""
``@task.sagemaker_callback``: a task that does the work of a callback step and closes it.

.. code-block:: python

    @task.sagemaker_callback
    def score(callback: dict) -> dict:
        rows = run_job(callback["arguments"]["input_uri"])
        return {"rows_scored": rows}  # the step's output parameters


    score(wait.output)  # the sensor's XCom; in an asset-triggered run, call score()
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.standard.operators.python import PythonOperator

from airflow_sm_callback._airflow import (
    AirflowException,
    AirflowSkipException,
    DecoratedOperator,
    task_decorator_factory,
)
from airflow_sm_callback.links.callback import SageMakerPipelineExecutionLink, persist_execution_link
from airflow_sm_callback.operators.callback import merge_output_parameters
from airflow_sm_callback.protocol.outputs import encode_output_parameters
from airflow_sm_callback.protocol.tokens import Outcome
from airflow_sm_callback.utils.asset_events import callbacks_in_asset_events
from airflow_sm_callback.utils.aws import AwsCallbackMixin, aws_template_fields
from airflow_sm_callback.utils.closing import STOPPED_BEFORE_WORK, request_token_for, will_retry
from airflow_sm_callback.utils.rendering import callback_from

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_sm_callback.protocol.message import CallbackMessage


class _SageMakerCallbackDecoratedOperator(AwsCallbackMixin, DecoratedOperator, PythonOperator):
    """
    Runs the decorated function with the callback, then closes the callback step.

    The function gets the callback dict (its first argument, or a ``callback`` keyword, or, in a
    run an ``AssetWatcher`` started, the callback of the triggering asset event). Its returned
    dict becomes the step's output parameters, converted to the types the step declares, and the
    step is closed as succeeded. If the function raises (or returns outputs the step rejects),
    the step is closed as failed **only on the task's last attempt**, so a retry can still
    succeed; then the task fails.

    Built as the standard provider builds ``@task`` (``DecoratedOperator`` over
    ``PythonOperator``), from their public classes.
    """

    template_fields: Sequence[str] = aws_template_fields("templates_dict", "op_args", "op_kwargs")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "templates_dict": "json",
        "op_args": "py",
        "op_kwargs": "py",
    }
    custom_operator_name = "@task.sagemaker_callback"
    operator_extra_links = (SageMakerPipelineExecutionLink(),)
    op_args: Sequence[Any]
    op_kwargs: dict[str, Any]

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        convert_to_declared_types: bool = True,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            kwargs_to_upstream={
                "python_callable": python_callable,
                "op_args": op_args,
                "op_kwargs": op_kwargs,
            },
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            **kwargs,
        )
        self._init_aws(aws_conn_id, region_name, verify, botocore_config)
        self.convert_to_declared_types = convert_to_declared_types

    def _callback(self, context: Context) -> CallbackMessage:
        if self.op_kwargs.get("callback") is not None:
            return callback_from(self.op_kwargs["callback"])
        if self.op_args:
            return callback_from(self.op_args[0])
        found = callbacks_in_asset_events(context.get("triggering_asset_events"))
        if len(found) != 1:
            raise AirflowException(
                "@task.sagemaker_callback needs the callback: pass the sensor's output "
                "(score(wait.output)), or in a run an AssetWatcher started, map over the run's "
                f"callbacks (it carries {len(found)}): "
                "task.expand(callback=...) with callbacks_in_asset_events(triggering_asset_events)"
            )
        self.op_kwargs = {**self.op_kwargs, "callback": found[0]}
        return callback_from(found[0])

    def execute(self, context: Context) -> Any:
        callback = self._callback(context)
        hook = self.hook
        hook.mask(callback.token)
        arn = callback.pipeline_execution_arn
        step = hook.find_callback_step(arn, token=callback.token)
        step_name = callback.step_name or (step.name if step else None)
        if step is not None and step.status == "Succeeded":
            # An earlier attempt did the work and closed the step: nothing left to do.
            self.log.info("Callback step %s of %s is already Succeeded: nothing to do", step.name, arn)
            return None
        if step is not None and step.is_closed:
            raise AirflowSkipException(
                f"callback step {step.name} of {arn} is already {step.status}: the work is not started"
            )
        if callback.is_stopping or (step is not None and step.status == "Stopping"):
            self._close_failed(context, callback, STOPPED_BEFORE_WORK)
            raise AirflowSkipException(f"{arn} is stopping: the step was closed and the work not started")
        try:
            result = super().execute(context)
            outputs = merge_output_parameters(result)
            declared = hook.get_output_types(arn, step_name) if self.convert_to_declared_types else None
            encoded = encode_output_parameters(outputs, declared)
            hook.send_step_success(
                callback.token,
                encoded,
                client_request_token=request_token_for(context, callback.token, Outcome.SUCCESS),
                execution_arn=arn,
            )
        except AirflowSkipException:
            raise
        except Exception as err:
            if will_retry(context):
                self.log.warning("The work failed and will be retried; the callback step stays open: %s", err)
            else:
                self._close_failed(
                    context, callback, f"Airflow task {self.dag_id}.{self.task_id} failed: {err}"
                )
            raise
        persist_execution_link(context, self, arn)
        self.log.info("Closed callback step %s of %s as succeeded", step_name or "", arn)
        return result

    def _close_failed(self, context: Context, callback: CallbackMessage, reason: str) -> None:
        self.hook.send_step_failure(
            callback.token,
            reason,
            client_request_token=request_token_for(context, callback.token, Outcome.FAILURE),
            execution_arn=callback.pipeline_execution_arn,
        )
        self.log.warning("Closed callback step of %s as failed: %s", callback.pipeline_execution_arn, reason)


def _callback_optional(python_callable: Callable[..., Any]) -> Callable[..., Any]:
    """
    Give the function's ``callback`` parameter a default of ``None``, so ``task()`` can be called
    without it in a run an ``AssetWatcher`` started (the callback then comes from the asset event).
    """
    signature = inspect.signature(python_callable)
    parameter = signature.parameters.get("callback")
    if parameter is None or parameter.default is not inspect.Parameter.empty:
        return python_callable
    try:
        relaxed = signature.replace(
            parameters=[
                p.replace(default=None) if p.name == "callback" else p for p in signature.parameters.values()
            ]
        )
    except ValueError:  # a parameter without a default follows it: leave the function as it is
        return python_callable

    @functools.wraps(python_callable)
    def with_optional_callback(*args: Any, **kwargs: Any) -> Any:
        return python_callable(*args, **kwargs)

    with_optional_callback.__signature__ = relaxed  # type: ignore[attr-defined]
    return with_optional_callback


def sagemaker_callback_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> Any:
    """
    Wrap a function that does a callback step's work: ``@task.sagemaker_callback``.

    The function receives the callback dict (as its first argument, or its ``callback``
    parameter, filled from the triggering asset event when the run was started by an
    ``AssetWatcher``); its returned dict becomes the step's output parameters and closes the step
    as succeeded; an exception closes it as failed on the last attempt only. Accepts the
    operator's ``aws_conn_id``, ``region_name``, ``verify``, ``botocore_config`` and
    ``convert_to_declared_types``.

    :param python_callable: the function to decorate.
    :param multiple_outputs: unroll the returned dict into one XCom per key.
    """

    def build(function: Callable[..., Any]) -> Any:
        return task_decorator_factory(
            python_callable=_callback_optional(function),
            multiple_outputs=multiple_outputs,
            decorated_operator_class=_SageMakerCallbackDecoratedOperator,
            **kwargs,
        )

    if python_callable is None:
        return build
    return build(python_callable)
