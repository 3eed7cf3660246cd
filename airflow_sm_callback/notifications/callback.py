"""A failure notifier that closes a callback step as failed from any task."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from airflow_sm_callback.protocol.tokens import Outcome
from airflow_sm_callback.utils.aws import build_hook
from airflow_sm_callback.utils.closing import request_token_for, resolve_target, will_retry
from airflow_sm_callback.utils.rendering import rendered_optional

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook


class SageMakerCallbackFailureNotifier(BaseNotifier):
    """
    Close a callback step as failed when a task fails for good: use it as ``on_failure_callback``.

    The reason is taken from ``context["exception"]``. Nothing happens while the task will still
    be retried (a retry must still be able to succeed), nor when the step is already closed.
    Which step: ``callback`` (the sensor's XCom dict), ``callback_task_id`` (the sensor's task id,
    its XCom is pulled), ``callback_token``, or ``pipeline_execution_arn`` with
    ``callback_step_name``.

    .. code-block:: python

        score = PythonOperator(
            ...,
            on_failure_callback=SageMakerCallbackFailureNotifier(callback_task_id="wait"),
        )

    :param callback: the sensor's XCom dict. (templated)
    :param callback_task_id: the task whose ``return_value`` XCom is the callback.
    :param callback_token: the callback token. (templated)
    :param pipeline_execution_arn: the execution. (templated)
    :param callback_step_name: the callback step's ``Name``. (templated)
    :param reason: the failure reason; by default ``Airflow task <dag>.<task> failed: <exception>``.
        (templated)
    :param aws_conn_id: The Airflow connection used for AWS credentials. (templated)
    :param region_name: AWS region; defaults to the connection's. (templated)
    :param verify: Whether to verify SSL certificates. (templated)
    :param botocore_config: botocore ``Config`` kwargs.
    """

    template_fields: Sequence[str] = (
        "callback",
        "callback_token",
        "pipeline_execution_arn",
        "callback_step_name",
        "reason",
        "aws_conn_id",
        "region_name",
        "verify",
    )

    def __init__(
        self,
        *,
        callback: Any = None,
        callback_task_id: str | None = None,
        callback_token: str | None = None,
        pipeline_execution_arn: str | None = None,
        callback_step_name: str | None = None,
        reason: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.callback = callback
        self.callback_task_id = callback_task_id
        self.callback_token = callback_token
        self.pipeline_execution_arn = pipeline_execution_arn
        self.callback_step_name = callback_step_name
        self.reason = reason
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    @cached_property
    def hook(self) -> SageMakerCallbackHook:
        return build_hook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def notify(self, context: Context) -> None:
        ti = context["ti"]
        if will_retry(context):
            self.log.info("%s.%s will be retried: the callback step stays open", ti.dag_id, ti.task_id)
            return
        callback = self.callback
        if callback is None and self.callback_task_id:
            callback = ti.xcom_pull(task_ids=self.callback_task_id)
        target = resolve_target(
            self.hook,
            callback=callback,
            token=self.callback_token,
            execution_arn=self.pipeline_execution_arn,
            step_name=self.callback_step_name,
        )
        if target is None:
            self.log.warning("The callback step has not started: nothing to close")
            return
        if target.execution_arn:
            step = self.hook.find_callback_step(target.execution_arn, token=target.token)
            if step is not None and step.is_closed:
                self.log.info("Callback step %s is already %s: nothing to do", step.name, step.status)
                return
        exception = context.get("exception")
        reason = (
            rendered_optional(self.reason)
            or f"Airflow task {ti.dag_id}.{ti.task_id} failed: {exception or 'no exception given'}"
        )
        self.hook.send_step_failure(
            target.token,
            reason,
            client_request_token=request_token_for(context, target.token, Outcome.FAILURE),
            execution_arn=target.execution_arn,
        )
        self.log.warning("Closed callback step of %s as failed: %s", target.execution_arn, reason)
