"""
The SageMaker response class: moto's, plus the pipeline-execution actions from the step engine.

:class:`CallbackSageMakerResponse` subclasses moto's ``SageMakerResponse`` the way moto's own
services and plugins extend a response class: one method per action, parameters from the
parsed request (``self.params``), answers as ``ActionResult``, errors as moto's
``SagemakerClientError`` with the engine's code. :func:`create_app` builds moto's per-service
Flask apps with ``create_backend_app`` and points SageMaker's at this class. Nothing in moto is
patched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from moto.core.responses import ActionResult
from moto.core.utils import convert_to_flask_response
from moto.moto_server.werkzeug_app import create_backend_app
from moto.sagemaker.exceptions import SagemakerClientError
from moto.sagemaker.responses import SageMakerResponse

from ._engine import EngineError, StepEngine
from ._moto import MotoCompatibilityError

__all__ = ["ENGINE_ENVIRON_KEY", "CallbackSageMakerResponse", "create_app"]

#: WSGI environ key under which :class:`~._app.EmulatorApp` hands its engine to the responses.
ENGINE_ENVIRON_KEY: Final = "airflow_sm_callback.engine"

JSONDict = dict[str, Any]


class CallbackSageMakerResponse(SageMakerResponse):
    """
    moto's SageMaker responses plus the callback side, answered by a :class:`~._engine.StepEngine`.

    ``CreatePipeline`` is moto's, except that the pipeline name in the ARN is lower-cased as
    SageMaker does. The pipeline-execution actions are answered by the engine found in the WSGI
    environ under :data:`ENGINE_ENVIRON_KEY`.
    """

    @property
    def _engine(self) -> StepEngine:
        return cast("StepEngine", self.normalized_request.environ[ENGINE_ENVIRON_KEY])

    def _param(self, name: str) -> Any:
        """A request parameter, as moto parsed it against the service model (``None`` if absent)."""
        return self.params.get(name)

    @staticmethod
    def _result(call: Callable[[], JSONDict]) -> ActionResult:
        try:
            return ActionResult(call())
        except EngineError as exc:
            raise SagemakerClientError(exc.code, exc.message) from None

    def _pipeline(self, name_or_arn: Any) -> Any:
        if not isinstance(name_or_arn, str) or not name_or_arn:
            raise EngineError("ValidationException", "PipelineName is required")
        pipelines = self.sagemaker_backend.pipelines
        found = pipelines.get(name_or_arn)
        if found is not None:
            return found
        wanted = name_or_arn.lower()
        for pipeline in list(pipelines.values()):
            if wanted in (pipeline.arn.lower(), pipeline.pipeline_name.lower()):
                return pipeline
        raise EngineError("ResourceNotFound", f"Pipeline {name_or_arn} does not exist.")

    def create_pipeline(self) -> ActionResult:
        """``CreatePipeline``: moto's, with SageMaker's lower-cased pipeline ARN."""
        super().create_pipeline()
        pipeline = self.sagemaker_backend.pipelines[self._param("PipelineName")]
        prefix, _, rest = pipeline.arn.partition(":pipeline/")
        pipeline.arn = f"{prefix}:pipeline/{rest.lower()}"
        return ActionResult({"PipelineArn": pipeline.arn})

    def start_pipeline_execution(self) -> ActionResult:
        """``StartPipelineExecution``: starts the step engine on the pipeline's definition."""

        def call() -> JSONDict:
            pipeline = self._pipeline(self._param("PipelineName"))
            response = self._engine.start_execution(
                account_id=self.current_account,
                region=self.region,
                pipeline_name=pipeline.pipeline_name,
                pipeline_arn=pipeline.arn,
                definition=pipeline.pipeline_definition,
                display_name=self._param("PipelineExecutionDisplayName"),
                description=self._param("PipelineExecutionDescription"),
                parameters=self._param("PipelineParameters"),
                client_request_token=self._param("ClientRequestToken"),
            )
            pipeline.last_execution_time = self._engine.describe_execution(response["PipelineExecutionArn"])[
                "CreationTime"
            ]
            return response

        return self._result(call)

    def describe_pipeline_execution(self) -> ActionResult:
        """``DescribePipelineExecution``."""
        return self._result(lambda: self._engine.describe_execution(self._param("PipelineExecutionArn")))

    def describe_pipeline_definition_for_execution(self) -> ActionResult:
        """``DescribePipelineDefinitionForExecution``."""
        return self._result(
            lambda: self._engine.definition_for_execution(self._param("PipelineExecutionArn"))
        )

    def list_pipeline_parameters_for_execution(self) -> ActionResult:
        """``ListPipelineParametersForExecution`` (one page)."""
        return self._result(
            lambda: self._engine.parameters_for_execution(self._param("PipelineExecutionArn"))
        )

    def list_pipeline_execution_steps(self) -> ActionResult:
        """``ListPipelineExecutionSteps``."""
        return self._result(
            lambda: self._engine.list_steps(
                self._param("PipelineExecutionArn"),
                max_results=self._param("MaxResults"),
                next_token=self._param("NextToken"),
                sort_order=self._param("SortOrder"),
            )
        )

    def list_pipeline_executions(self) -> ActionResult:
        """``ListPipelineExecutions``."""
        return self._result(
            lambda: self._engine.list_executions(
                self._pipeline(self._param("PipelineName")).arn,
                max_results=self._param("MaxResults"),
                next_token=self._param("NextToken"),
                sort_order=self._param("SortOrder"),
                sort_by=self._param("SortBy"),
            )
        )

    def send_pipeline_execution_step_success(self) -> ActionResult:
        """``SendPipelineExecutionStepSuccess``."""
        return self._result(
            lambda: self._engine.send_step_success(
                account_id=self.current_account,
                callback_token=self._param("CallbackToken"),
                output_parameters=self._param("OutputParameters"),
                client_request_token=self._param("ClientRequestToken"),
            )
        )

    def send_pipeline_execution_step_failure(self) -> ActionResult:
        """``SendPipelineExecutionStepFailure``."""
        return self._result(
            lambda: self._engine.send_step_failure(
                account_id=self.current_account,
                callback_token=self._param("CallbackToken"),
                failure_reason=self._param("FailureReason"),
                client_request_token=self._param("ClientRequestToken"),
            )
        )

    def stop_pipeline_execution(self) -> ActionResult:
        """``StopPipelineExecution``."""
        return self._result(
            lambda: self._engine.stop_execution(
                account_id=self.current_account,
                arn=self._param("PipelineExecutionArn"),
                client_request_token=self._param("ClientRequestToken"),
            )
        )


def create_app(service: Any) -> Any:
    """
    moto's per-service Flask app, with SageMaker's views dispatching to the callback responses.

    ``create_backend_app`` wraps each of the service's handlers in ``convert_to_flask_response``,
    which keeps the handler as ``callback``; the views whose handler is
    ``SageMakerResponse.dispatch`` get ``CallbackSageMakerResponse.dispatch`` instead.

    :param service: the moto service name (``DomainDispatcherApplication`` passes it).
    :return: the Flask app.
    :raises MotoCompatibilityError: when the SageMaker app has no such view to replace.
    """
    app = create_backend_app(service)
    if service == "sagemaker":
        view = convert_to_flask_response(CallbackSageMakerResponse.dispatch)
        endpoints = [
            endpoint
            for endpoint, found in app.view_functions.items()
            if getattr(found, "callback", None) == SageMakerResponse.dispatch
        ]
        for endpoint in endpoints:
            app.view_functions[endpoint] = view
        if not endpoints:
            raise MotoCompatibilityError(
                "moto's SageMaker app has no view calling SageMakerResponse.dispatch to replace"
            )
    return app
