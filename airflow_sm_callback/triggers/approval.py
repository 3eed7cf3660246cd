"""
SageMakerCallbackApprovalTrigger: waits for a person's answer to an approval request, and watches the pipeline meanwhile.

The request itself is Airflow's human-in-the-loop request (Required Actions in the UI, the
``hitlDetails`` REST API); this trigger reads its response as the standard provider's
``HITLTrigger`` does. Beside it, every ``stop_check_interval`` seconds, it reads the pipeline
execution's status: a stopped pipeline (``StopPipelineExecution``) cannot finish until its
callback step is closed, so when it is stopping the trigger records a ``Reject`` on no one's
behalf (the request leaves Required Actions and a later answer gets 409) and fires a
``stopped`` event: the task closes the step as failed, and no approval is sent after the stop.

Events (``{"kind": ...}``): ``response`` (the answer, in the payload shape Airflow resumes a
task with: ``chosen_options``, ``params_input``, ``responded_at``, ``responded_by_user``,
``timedout``), ``stopped`` (``status``), ``timeout`` (no answer and no default outcome: a
``Reject`` is recorded on no one's behalf, and the task closes the step as failed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from airflow_sm_callback import _airflow
from airflow_sm_callback.hooks.errors import describe_error
from airflow_sm_callback.utils.aws import build_hook

__all__ = ["STOPPING_STATUSES", "SageMakerCallbackApprovalTrigger"]

#: Execution statuses in which no approval may be sent any more.
STOPPING_STATUSES: Final = frozenset({"Stopping", "Stopped", "Failed"})


class SageMakerCallbackApprovalTrigger(_airflow.BaseTrigger):
    """
    Wait for the answer to a task's approval request, its timeout, or its pipeline's stop.

    :param ti_id: the task instance whose request it is.
    :param execution_arn: the pipeline execution whose callback step waits for the answer.
    :param timeout_at: UNIX time at which nobody has answered (``None``: no timeout).
    :param default_options: the outcome recorded at the timeout (``None``: a ``timeout`` event).
    :param default_params: the form's values recorded with it.
    :param poke_interval: seconds between two looks at the response.
    :param stop_check_interval: seconds between two looks at the execution's status.
    """

    def __init__(
        self,
        *,
        ti_id: str,
        execution_arn: str,
        timeout_at: float | None = None,
        default_options: list[str] | None = None,
        default_params: dict[str, Any] | None = None,
        poke_interval: float = 2.0,
        stop_check_interval: float = 30.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.ti_id = str(ti_id)
        self.execution_arn = execution_arn
        self.timeout_at = timeout_at
        self.default_options = default_options
        self.default_params = _airflow.decoded_kwarg(default_params) or {}
        self.poke_interval = poke_interval
        self.stop_check_interval = stop_check_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = _airflow.decoded_kwarg(botocore_config)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ti_id": self.ti_id,
                "execution_arn": self.execution_arn,
                "timeout_at": self.timeout_at,
                "default_options": self.default_options,
                "default_params": self.default_params,
                "poke_interval": self.poke_interval,
                "stop_check_interval": self.stop_check_interval,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
            },
        )

    async def run(self) -> AsyncIterator[_airflow.TriggerEvent]:
        from uuid import UUID

        ti_id = UUID(self.ti_id)
        hook = build_hook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )
        next_stop_check = 0.0
        try:
            while True:
                response = await _airflow.ahitl_response(ti_id)
                if response is not None:
                    event = {"kind": "response", **response}
                    break
                if time.monotonic() >= next_stop_check:
                    next_stop_check = time.monotonic() + self.stop_check_interval
                    status = await self._status(hook)
                    if status in STOPPING_STATUSES:
                        self.log.warning(
                            "The pipeline execution %s is %s: its approval request is closed as rejected",
                            self.execution_arn,
                            status,
                        )
                        recorded = await _airflow.arecord_hitl_response(ti_id, ["Reject"], {})
                        event = {"kind": "stopped", "status": status, "recorded": recorded}
                        break
                if self.timeout_at is not None and time.time() >= self.timeout_at:
                    # The default outcome, or without one a Reject, on no one's behalf: the
                    # request leaves Required Actions and a late answer gets 409.
                    options = list(self.default_options or ["Reject"])
                    recorded = await _airflow.arecord_hitl_response(ti_id, options, dict(self.default_params))
                    if self.default_options is None and recorded.get("responded_by_user") is None:
                        event = {"kind": "timeout", "timeout_at": self.timeout_at}
                    else:  # the default, or a person's answer given at the last moment
                        event = {"kind": "response", **recorded}
                    break
                await asyncio.sleep(self.poke_interval)
        finally:
            await hook.aclose()
        yield _airflow.TriggerEvent(event)

    async def _status(self, hook: Any) -> str | None:
        try:
            described = await hook.adescribe_execution(self.execution_arn)
        except Exception as err:
            # Looked at again next time; the answer is still awaited meanwhile.
            self.log.warning("Reading the status of %s failed: %s", self.execution_arn, describe_error(err))
            return None
        status = described.get("PipelineExecutionStatus")
        return str(status) if status else None
