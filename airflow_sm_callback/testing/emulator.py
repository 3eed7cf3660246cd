"""
A local emulator of the SageMaker Pipelines callback side, over real HTTP.

:class:`CallbackEmulator` starts moto's server on a free loopback port, in a thread, with the
callback side of SageMaker Pipelines added: ``StartPipelineExecution`` runs a step engine that
resolves pipeline expressions, sends callback messages to SQS, evaluates conditions and fails
on ``Fail`` steps; ``SendPipelineExecutionStepSuccess``/``Failure``, ``StopPipelineExecution``,
``DescribePipelineExecution``, ``DescribePipelineDefinitionForExecution``,
``ListPipelineExecutionSteps``, ``ListPipelineExecutions`` and
``ListPipelineParametersForExecution`` answer as the service documents. SQS (and every other
service) is moto's own. Any boto3 user can talk to it; nothing here imports Airflow.

Everything a test reads or changes goes over HTTP control endpoints under ``/_emulator/`` on the
same server (:class:`~._control.ControlEndpoints`, the request log, faults, settings and queue
peeks), so a handle from :meth:`CallbackEmulator.connect` to an emulator in another process
(``python -m airflow_sm_callback.testing``) works exactly like the one that started it.

Settings (:meth:`CallbackEmulator.configure`) cover what the service leaves undocumented; every
default is the strict choice:

``strict_output_names`` (``True``)
    an output name the step does not declare: ``ValidationException`` naming it; lenient:
    accepted and dropped.
``strict_output_types`` (``True``)
    a value that does not cast to the output's declared type: ``ValidationException`` naming
    the output and type; lenient: stored, and the execution fails when a later step reads it.
``conflict_on_reclose`` (``True``)
    closing an already closed step with a new ``ClientRequestToken``: ``ConflictException``;
    lenient: a success response, nothing changes.
``conflict_on_stopped_or_failed`` (``True``)
    closing a step of a ``Stopped`` or ``Failed`` execution: ``ConflictException``; lenient:
    the re-close rule above decides.
``strict_start_parameters`` (``True``)
    ``StartPipelineExecution`` with an undeclared parameter, a value that does not cast to the
    parameter's type, or without a parameter that has no default: ``ValidationException``.
``step_delay_seconds`` (``0``)
    how long each non-callback step runs before it succeeds; ``0`` finishes it inside the
    request that started it.

The full description, the control endpoints and the choices made where AWS documents nothing
are in ``airflow_sm_callback/testing/README.md``.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import boto3
from botocore.config import Config

from ._control import ControlEndpoints, EmulatorError, RequestRecord

if TYPE_CHECKING:
    from ._server import EmulatorServer

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_REGION",
    "FINISHED_STATUSES",
    "CallbackEmulator",
    "EmulatorError",
    "RequestRecord",
]

DEFAULT_REGION: Final = "us-east-1"
#: moto's default account.
DEFAULT_ACCOUNT_ID: Final = "123456789012"
#: Dummy credentials (moto accepts any).
ACCESS_KEY_ID: Final = "testing"
SECRET_ACCESS_KEY: Final = "testing"
#: Execution statuses that never change again.
FINISHED_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
_INTERNAL_HEADER: Final = "X-Emulator-Internal"


def _json_text(value: object) -> str:
    """Encode a parameter value as SageMaker expects it on the wire (a string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


class CallbackEmulator(ControlEndpoints):
    """
    The SageMaker Pipelines callback side plus moto's SQS, on a local HTTP server.

    Start one (``with CallbackEmulator() as emulator: ...``) or attach to one running elsewhere
    with :meth:`connect`; both work the same.

    :param host: address to bind (loopback by default).
    :param port: port to bind; ``0`` picks a free one.
    :param region: region used by the helpers and clients.
    :param settings: initial settings, applied on :meth:`start` (see :meth:`configure`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = DEFAULT_REGION,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._host = host
        self._port = port
        self._region = region
        self._initial_settings = dict(settings or {})
        self._server: EmulatorServer | None = None
        self._account_id = DEFAULT_ACCOUNT_ID
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def connect(cls, endpoint_url: str, *, region: str | None = None) -> CallbackEmulator:
        """
        A handle to an emulator that is already running (in this or another process).

        :param endpoint_url: its endpoint, e.g. the ``endpoint_url=...`` line printed by
            ``python -m airflow_sm_callback.testing``.
        :param region: region for the helpers and clients; the emulator's own when omitted.
        :return: the handle; :meth:`stop` on it does nothing.
        :raises EmulatorError: when nothing answers there.
        """
        handle = cls(region=region or DEFAULT_REGION)
        handle._endpoint_url = endpoint_url.rstrip("/")
        health = handle._control("GET", "health")
        handle._account_id = str(health["account_id"])
        if region is None:
            handle._region = str(health["region"])
        return handle

    def start(self) -> CallbackEmulator:
        """
        Start the server on its thread (no-op when already running).

        :return: ``self``.
        """
        if self._endpoint_url is not None:
            return self
        from ._server import EmulatorServer

        server = EmulatorServer(self._host, self._port, self._region)
        server.start()
        self._server = server
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        self._endpoint_url = f"http://{host}:{server.port}"
        self._account_id = server.app.account_id
        if self._initial_settings:
            self.configure(**self._initial_settings)
        return self

    def stop(self) -> None:
        """Stop the server this handle started; on a :meth:`connect` handle the server keeps running."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            self._endpoint_url = None
        with self._clients_lock:
            self._clients.clear()

    def __enter__(self) -> CallbackEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def region(self) -> str:
        """The region clients and helpers use."""
        return self._region

    @property
    def account_id(self) -> str:
        """The account every resource lives in (moto's default)."""
        return self._account_id

    @property
    def is_local(self) -> bool:
        """Whether this handle started the server (rather than :meth:`connect`-ed to it)."""
        return self._server is not None

    # ------------------------------------------------------------------ clients and env

    def client(self, service: str, *, config: Config | None = None) -> Any:
        """
        A new boto3 client for ``service`` pointed at the emulator.

        :param service: ``"sqs"``, ``"sagemaker"``, ...
        :param config: botocore config (retries, timeouts, ``parameter_validation``...).
        :return: the client (dummy credentials, endpoint and region set).
        """
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=config,
        )

    def aws_env(self) -> dict[str, str]:
        """
        Environment variables that point AWS SDKs in a subprocess at the emulator.

        :return: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
            ``AWS_ENDPOINT_URL``.
        """
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def airflow_connection(self, conn_id: str = "aws_default") -> dict[str, str]:
        """
        An Airflow AWS connection to the emulator, as an environment variable.

        :param conn_id: the connection id.
        :return: ``{"AIRFLOW_CONN_<CONN_ID>": <JSON connection>}`` (``conn_type`` ``aws``, dummy
            ``login``/``password``, ``extra`` with ``endpoint_url`` and ``region_name``).
        """
        connection = {
            "conn_type": "aws",
            "login": ACCESS_KEY_ID,
            "password": SECRET_ACCESS_KEY,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)}

    def _internal(self, service: str) -> Any:
        """A cached client whose requests the server logs as internal and never faults."""
        with self._clients_lock:
            found = self._clients.get(service)
            if found is None:
                found = self.client(service, config=Config(retries={"mode": "standard", "max_attempts": 3}))

                def mark(request: Any, **_: Any) -> None:
                    request.headers[_INTERNAL_HEADER] = "1"

                found.meta.events.register("before-sign", mark)
                self._clients[service] = found
            return found

    # ------------------------------------------------------------------ SQS helpers

    def create_queue(
        self,
        name: str,
        *,
        visibility_timeout: int | None = None,
        dead_letter_max_receive_count: int | None = None,
    ) -> str:
        """
        Create a standard queue.

        :param name: queue name.
        :param visibility_timeout: the queue's ``VisibilityTimeout`` in seconds.
        :param dead_letter_max_receive_count: also create ``<name>-dlq`` and a redrive policy
            moving a message there after this many receives (see :meth:`dead_letter_queue_url`).
        :return: the queue URL.
        """
        sqs = self._internal("sqs")
        attributes: dict[str, str] = {}
        if visibility_timeout is not None:
            attributes["VisibilityTimeout"] = str(int(visibility_timeout))
        if dead_letter_max_receive_count is not None:
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(int(dead_letter_max_receive_count))}
            )
        return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])

    def dead_letter_queue_url(self, name: str) -> str:
        """:param name: the source queue's name. :return: the URL of ``<name>-dlq``."""
        return str(self._internal("sqs").get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"])

    # ------------------------------------------------------------------ SageMaker helpers

    def create_pipeline(
        self,
        name: str,
        definition: Mapping[str, Any] | str | pathlib.Path,
        role_arn: str | None = None,
    ) -> str:
        """
        Create a pipeline.

        :param name: pipeline name.
        :param definition: the definition: a mapping, JSON text, or a path to a JSON file.
        :param role_arn: the pipeline's role (a dummy by default).
        :return: the pipeline ARN.
        """
        if isinstance(definition, pathlib.Path):
            text = definition.read_text()
        elif isinstance(definition, str):
            text = definition
        else:
            text = json.dumps(definition)
        response = self._internal("sagemaker").create_pipeline(
            PipelineName=name,
            PipelineDefinition=text,
            RoleArn=role_arn or f"arn:aws:iam::{self.account_id}:role/SageMakerPipelineRole",
        )
        return str(response["PipelineArn"])

    def start_execution(
        self,
        pipeline_name: str,
        parameters: Mapping[str, object] | None = None,
        display_name: str | None = None,
    ) -> str:
        """
        Start an execution.

        :param pipeline_name: the pipeline.
        :param parameters: parameter values; non-strings are encoded (``True`` as ``"true"``,
            numbers with ``repr``).
        :param display_name: ``PipelineExecutionDisplayName``.
        :return: the execution ARN.
        """
        kwargs: dict[str, Any] = {"PipelineName": pipeline_name}
        if parameters:
            kwargs["PipelineParameters"] = [
                {"Name": name, "Value": _json_text(value)} for name, value in parameters.items()
            ]
        if display_name:
            kwargs["PipelineExecutionDisplayName"] = display_name
        return str(self._internal("sagemaker").start_pipeline_execution(**kwargs)["PipelineExecutionArn"])

    def describe_execution(self, execution_arn: str) -> dict[str, Any]:
        """:param execution_arn: the execution. :return: ``DescribePipelineExecution``'s answer."""
        response = dict(
            self._internal("sagemaker").describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        )
        response.pop("ResponseMetadata", None)
        return response

    def list_steps(self, execution_arn: str) -> list[dict[str, Any]]:
        """
        :param execution_arn: the execution.
        :return: every started step (all pages), oldest first.
        """
        return list(self._iter_steps(execution_arn))

    def _iter_steps(self, execution_arn: str) -> Iterator[dict[str, Any]]:
        sagemaker = self._internal("sagemaker")
        kwargs: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "SortOrder": "Ascending"}
        while True:
            page = sagemaker.list_pipeline_execution_steps(**kwargs)
            yield from page["PipelineExecutionSteps"]
            if not page.get("NextToken"):
                return
            kwargs["NextToken"] = page["NextToken"]

    def step(self, execution_arn: str, step_name: str) -> dict[str, Any]:
        """
        :param execution_arn: the execution.
        :param step_name: the step.
        :return: that step as ``ListPipelineExecutionSteps`` shows it.
        :raises KeyError: when the step has not started.
        """
        for item in self._iter_steps(execution_arn):
            if item["StepName"] == step_name:
                return item
        raise KeyError(f"step {step_name!r} has not started in {execution_arn}")

    def wait_for_execution(
        self,
        execution_arn: str,
        statuses: Collection[str] = FINISHED_STATUSES,
        timeout: float = 30,
    ) -> str:
        """
        Wait until an execution's status is one of ``statuses``.

        :param execution_arn: the execution.
        :param statuses: the statuses to wait for (finished ones by default).
        :param timeout: seconds.
        :return: the status reached.
        :raises TimeoutError: with the last status seen.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.describe_execution(execution_arn)["PipelineExecutionStatus"])
            if status in statuses:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{execution_arn} is still {status} after {timeout} s")
            time.sleep(0.02)
