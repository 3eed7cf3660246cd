"""
The WSGI app: control endpoints, fault injection and the request log around moto's server.

:class:`EmulatorApp` answers the control endpoints under ``/_emulator/`` itself, identifies
every AWS request (:func:`identify_request`: service from the SigV4 credential scope, action
from ``X-Amz-Target`` or the query ``Action``; :func:`request_queue`: the SQS queue), answers injected faults (:mod:`._faults`) before
moto sees the request, and logs every request with its HTTP status (:mod:`._request_log`). The
rest goes to moto's ``DomainDispatcherApplication``, whose SageMaker app answers with
:class:`~._sagemaker.CallbackSageMakerResponse`; requests that reach moto's SQS hold
:data:`~._lock.MOTO_LOCK`.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast
from urllib.parse import parse_qs

from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

from ._engine import EngineError, StepEngine
from ._faults import FaultRegistry, fault_response, status_line
from ._lock import MOTO_LOCK
from ._request_log import RequestLog, queue_name
from ._sagemaker import ENGINE_ENVIRON_KEY, create_app
from ._sqs import fast_scan_queues, peek_queue, purge_queue, visibility_changed

__all__ = [
    "CONTROL_PREFIX",
    "INTERNAL_HEADER",
    "EmulatorApp",
    "identify_request",
    "request_queue",
    "request_region",
]

#: Request header marking a request sent by the emulator's own helpers (logged as internal,
#: never faulted).
INTERNAL_HEADER: Final = "X-Emulator-Internal"
_INTERNAL_ENVIRON: Final = "HTTP_X_EMULATOR_INTERNAL"
#: Path prefix of the control endpoints.
CONTROL_PREFIX: Final = "/_emulator/"

_TARGET_PREFIX_SERVICES: Final = {"AmazonSQS": "sqs", "SageMaker": "sagemaker"}
#: SQS actions after which the queue's waiting long polls look again at when to wake.
_VISIBILITY_ACTIONS: Final = frozenset({"ChangeMessageVisibility", "ChangeMessageVisibilityBatch"})

StartResponse = Callable[..., Any]


def identify_request(environ: dict[str, Any]) -> tuple[str, str]:
    """
    Which service and action a request is for, cheaply.

    The service comes from the SigV4 credential scope (``Credential=AK/date/region/SERVICE/...``)
    or the ``X-Amz-Target`` prefix; the action from ``X-Amz-Target`` (JSON protocols, SQS
    included), the query string's ``Action`` or a form-encoded body's ``Action`` (the body is
    put back for moto). Anything else is named ``"<METHOD> <path>"``.

    :param environ: the WSGI environ.
    :return: ``(service, action)``.
    """
    service = ""
    auth = environ.get("HTTP_AUTHORIZATION") or ""
    position = auth.find("Credential=")
    if position >= 0:
        scope = auth[position + 11 :].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3].lower()
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        prefix, _, action = target.rpartition(".")
        if not service:
            service = _TARGET_PREFIX_SERVICES.get(prefix, prefix.split("_")[0].lower())
        return service or "unknown", action
    query = environ.get("QUERY_STRING") or ""
    if "Action=" in query:
        actions = parse_qs(query).get("Action")
        if actions:
            return service or "unknown", actions[0]
    content_type = environ.get("CONTENT_TYPE") or ""
    if content_type.startswith("application/x-www-form-urlencoded"):
        body = buffered_body(environ)
        if body:
            actions = parse_qs(body.decode("utf-8", "replace")).get("Action")
            if actions:
                return service or "unknown", actions[0]
    return service or "unknown", f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('PATH_INFO', '/')}"


def buffered_body(environ: dict[str, Any]) -> bytes:
    """A request's body (``CONTENT_LENGTH`` bytes), put back as a buffer for moto to read again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if not length:
        return b""
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def request_queue(environ: dict[str, Any]) -> str | None:
    """
    The name of the SQS queue a request names (its ``QueueUrl``, or ``QueueName`` when it creates
    one), from the JSON or form-encoded body or the query string; the body is put back for moto.
    ``None`` when it names none.
    """
    query = environ.get("QUERY_STRING") or ""
    fields: Mapping[str, Any] = {k: v[0] for k, v in parse_qs(query).items()} if "Queue" in query else {}
    if not fields:
        body = buffered_body(environ)
        if body:
            content_type = environ.get("CONTENT_TYPE") or ""
            try:
                if content_type.startswith("application/x-www-form-urlencoded"):
                    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
                else:
                    parsed = json.loads(body or b"null")
                    fields = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                fields = {}
    value = fields.get("QueueUrl") or fields.get("QueueName")
    return queue_name(value) if isinstance(value, str) else None


def request_region(environ: Mapping[str, Any], default: str) -> str:
    """The region of a SigV4-signed request (from its credential scope), else ``default``."""
    auth = str(environ.get("HTTP_AUTHORIZATION") or "")
    position = auth.find("Credential=")
    if position >= 0:
        scope = auth[position + 11 :].split(",", 1)[0].split("/")
        if len(scope) >= 4 and scope[2]:
            return scope[2]
    return default


class EmulatorApp:
    """
    The WSGI application: control endpoints, fault injection and the request log around moto.

    :param engine: the step engine the SageMaker responses use.
    :param region: the emulator's default region (for queue URLs that name none).
    :param account_id: the account reported by ``/_emulator/health``.
    """

    def __init__(self, engine: StepEngine, region: str, account_id: str = DEFAULT_ACCOUNT_ID) -> None:
        self.engine = engine
        self.region = region
        self.account_id = account_id
        self.log = RequestLog()
        self.faults = FaultRegistry()
        self._moto = DomainDispatcherApplication(create_app)
        self._apps: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, path[len(CONTROL_PREFIX) :])
        started = time.monotonic()
        service, action = identify_request(environ)
        internal = environ.get(_INTERNAL_ENVIRON) == "1"
        queue = request_queue(environ) if service == "sqs" else None
        if not internal:
            fault = self.faults.match(service, action)
            if fault is not None:
                status_line, headers, body = fault_response(fault, service, environ)
                start_response(status_line, headers)
                self.log.record(
                    service,
                    action,
                    fault.http_status,
                    internal=False,
                    started=started,
                    fault_id=fault.fault_id,
                    queue=queue,
                )
                return [body]
        environ[ENGINE_ENVIRON_KEY] = self.engine
        statuses: list[int] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        region = request_region(environ, self.region)
        # SageMaker requests take the step engine's lock, and the engine takes MOTO_LOCK to send
        # a callback message: they must not hold MOTO_LOCK first (the lock order is engine, moto).
        serial = contextlib.nullcontext() if service == "sagemaker" else MOTO_LOCK
        try:
            with serial:
                if service == "sqs":
                    # Queues made elsewhere (moto in this process) get the cheap scans and the
                    # long poll that gives the lock up, before this request touches them.
                    fast_scan_queues(self.account_id, region)
                result = self._backend_app(environ, service)(environ, capture)
                if service == "sqs" and action == "CreateQueue":
                    fast_scan_queues(self.account_id, region)
                if service == "sqs" and action in _VISIBILITY_ACTIONS and queue is not None:
                    visibility_changed(self.account_id, region, queue)
        except Exception:
            self.log.record(service, action, 500, internal=internal, started=started, queue=queue)
            raise
        status = statuses[-1] if statuses else 0
        self.log.record(service, action, status, internal=internal, started=started, queue=queue)
        return cast("Iterable[bytes]", result)

    def _backend_app(self, environ: dict[str, Any], service: str) -> Any:
        """
        The moto app that answers a request: for SQS and SageMaker's API, found once and kept.

        moto's dispatcher finds the app for every request under one process-wide lock, listing
        moto's package directory each time (a ``stat`` per service); under load that lock
        serialises every request. Signed SQS and SageMaker API requests always go to the same
        app, so it is looked up once.
        """
        path = str(environ.get("PATH_INFO") or "")
        direct = service == "sqs" or (
            service == "sagemaker" and not path.endswith(("invocations", "BatchPutMetrics"))
        )
        if not direct or "Credential=" not in str(environ.get("HTTP_AUTHORIZATION") or ""):
            return self._moto.get_application(environ)
        app = self._apps.get(service)
        if app is None:
            app = self._apps[service] = self._moto.get_application(environ)
        return app

    # ------------------------------------------------------------------ control endpoints

    def _control(self, environ: dict[str, Any], start_response: StartResponse, route: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING") or "").items()}
        try:
            body = self._json_body(environ)
            status, payload = self._route(method, route.strip("/"), query, body)
        except EngineError as exc:
            status, payload = 400, {"error": exc.message, "code": exc.code}
        except (ValueError, KeyError, TypeError) as exc:
            status, payload = 400, {"error": str(exc), "code": "BadRequest"}
        except Exception as exc:
            status, payload = 400, {"error": f"{type(exc).__name__}: {exc}", "code": type(exc).__name__}
        data = json.dumps(payload, default=str).encode()
        start_response(
            status_line(status),
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    @staticmethod
    def _json_body(environ: dict[str, Any]) -> Any:
        body = buffered_body(environ)
        return json.loads(body) if body else None

    def _route(self, method: str, route: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        include_internal = query.get("include_internal", "").lower() in ("1", "true")
        service = query.get("service") or None
        queue = query.get("queue") or None
        if route == "health" and method == "GET":
            return 200, {"status": "ok", "region": self.region, "account_id": self.account_id}
        if route == "requests":
            if method == "GET":
                return 200, {"requests": self.log.records(service, include_internal, queue)}
            if method == "DELETE":
                return 200, {"cleared": self.log.clear()}
        if route == "request-counts" and method == "GET":
            return 200, {"counts": self.log.counts(service, include_internal, queue)}
        if route == "faults":
            if method == "GET":
                return 200, {"faults": self.faults.list()}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("a JSON object describing the fault is required")
                return 200, {"fault_id": self.faults.add(body)}
            if method == "DELETE":
                return 200, {"cleared": self.faults.clear()}
        if route.startswith("faults/") and method == "DELETE":
            return 200, {"removed": self.faults.remove(route[len("faults/") :])}
        if route == "settings":
            if method == "GET":
                return 200, {"settings": self.engine.settings.as_dict()}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ValueError("a JSON object of settings is required")
                return 200, {"settings": self.engine.configure(body).as_dict()}
            if method == "DELETE":
                return 200, {"settings": self.engine.reset_settings().as_dict()}
        if route == "accepted-closes" and method == "GET":
            return 200, {"accepted_closes": self.engine.accepted_closes()}
        if route == "queue-messages" and method == "GET":
            return 200, {"messages": peek_queue(query["queue_url"], self.region)}
        if route == "purge-queue" and method == "POST":
            if not isinstance(body, dict):
                raise ValueError('{"queue_url": ...} is required')
            return 200, {"purged": purge_queue(str(body["queue_url"]), self.region)}
        if route == "reset" and method == "POST":
            self.faults.clear()
            self.log.clear()
            return 200, {"settings": self.engine.reset_settings().as_dict()}
        return 404, {"error": f"no control endpoint {method} /_emulator/{route}", "code": "NotFound"}
