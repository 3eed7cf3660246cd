"""
Airflow's internals, in one place: every use of Airflow outside its public surface goes through here.

The rest of the package imports Airflow only from the public Task SDK (``airflow.sdk``),
``airflow.providers.common.compat`` and the providers' public classes;
``tests/unit/test_airflow_boundary.py`` fails when another module reaches further. Each
function here names the Airflow version it was written against and the public alternative, if
any, so that when a later Airflow changes one of these internals (or an older one lacks it) the
change touches this module only.

Written against Apache Airflow 3.3.2 (Task SDK 1.3.2) and checked on 3.0.6 (Task SDK 1.0.6),
3.2.1 and 3.3.1 (``tests/unit/test_airflow_internals.py`` runs on each). Names that moved
between those versions are found here once, in the order Airflow's own
``airflow.providers.common.compat`` looks for them; that package cannot serve itself: the
version Airflow 3.0.6 is installed with (1.7.3) has neither its ``sdk`` nor its ``triggers``
module.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow import __version__ as _AIRFLOW_VERSION_TEXT
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent
from packaging.version import Version

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AdvanceItem",
    "AirflowException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseEventTrigger",
    "BaseTrigger",
    "DecoratedOperator",
    "SharedStreamManager",
    "SharedStreamProducer",
    "TaskKey",
    "TriggerEvent",
    "TriggerRule",
    "ahitl_response",
    "amask_secrets",
    "arecord_hitl_response",
    "atask_states",
    "conf",
    "decoded_kwarg",
    "first_reschedule_date",
    "in_triggerer",
    "mask_secret",
    "process_context",
    "register_tokens",
    "reschedule_context",
    "task_decorator_factory",
    "upsert_hitl_detail",
]

log = logging.getLogger(__name__)

#: The installed Airflow's version, ``(major, minor, micro)``.
AIRFLOW_VERSION: tuple[int, int, int] = Version(_AIRFLOW_VERSION_TEXT).release[:3]  # type: ignore[assignment]
#: Airflow 3.1 brought ``AssetOrTimeSchedule`` and human-in-the-loop tasks.
AIRFLOW_V_3_1_PLUS: bool = AIRFLOW_VERSION >= (3, 1, 0)
#: Shared streams in ack mode (``airflow.triggers.shared_stream``) exist from Airflow 3.3.
AIRFLOW_V_3_3_PLUS: bool = AIRFLOW_VERSION >= (3, 3, 0)


def _first(name: str, *modules: str) -> Any:
    """``name`` from the first of ``modules`` that has it (where Airflow moved it over its versions)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {', '.join(modules)} has {name} (Airflow {_AIRFLOW_VERSION_TEXT})")


# -- names that moved ------------------------------------------------------------------------------
# Task SDK 1.1+ (Airflow 3.1+) has them in ``airflow.sdk``; 3.0 in core. Public alternative:
# ``airflow.providers.common.compat.sdk``, from common.compat 1.8 (not what 3.0.6 installs).

AirflowException: Any = _first("AirflowException", "airflow.sdk.exceptions", "airflow.exceptions")
AirflowSensorTimeout: Any = _first("AirflowSensorTimeout", "airflow.sdk.exceptions", "airflow.exceptions")
AirflowSkipException: Any = _first("AirflowSkipException", "airflow.sdk.exceptions", "airflow.exceptions")
TriggerRule: Any = _first("TriggerRule", "airflow.sdk", "airflow.utils.trigger_rule")
conf: Any = _first("conf", "airflow.sdk", "airflow.configuration")
# ``@task``'s building blocks: ``airflow.sdk.bases.decorator`` in every Airflow 3.
DecoratedOperator: Any = _first("DecoratedOperator", "airflow.sdk.bases.decorator")
task_decorator_factory: Any = _first("task_decorator_factory", "airflow.sdk.bases.decorator")

if AIRFLOW_V_3_3_PLUS or TYPE_CHECKING:
    # From Airflow 3.3 (``airflow.triggers.shared_stream``), outside the Task SDK.
    from airflow.triggers.shared_stream import AdvanceItem, SharedStreamManager, SharedStreamProducer
else:  # pragma: no cover - below 3.3
    AdvanceItem = None
    SharedStreamManager = None
    SharedStreamProducer = object


# ----------------------------------------------------------------------------------------------
# Where the code runs
# ----------------------------------------------------------------------------------------------


def in_triggerer() -> bool:
    """
    Whether this process is a triggerer's trigger runner (so task instance states can be read
    through its supervisor).

    Airflow 3.3.2: the trigger runner sets ``task_runner.SUPERVISOR_COMMS`` to a
    ``TriggerCommsDecoder`` of ``airflow.jobs.triggerer_job_runner``. No public alternative: a
    trigger is not told where it runs.
    """
    runner = sys.modules.get("airflow.jobs.triggerer_job_runner")
    decoder = getattr(runner, "TriggerCommsDecoder", None)
    if decoder is None:
        return False
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), decoder)


def process_context() -> contextvars.Context:
    """
    A copy of the current context without the log binding of the trigger running in it, for
    asyncio tasks that work for the whole process (the hand-off confirmer, the shared poll below
    Airflow 3.3): what they log goes to the triggerer's log, not into one task's.

    Airflow's triggerer binds the running trigger to structlog's context variables
    (``TriggerRunner.run_trigger`` calls ``structlog.contextvars.bind_contextvars``: the
    ``trigger_id`` from 3.0.6, the task instance's ids too by 3.3.2) and writes what is logged
    under that binding to the trigger's task log. An asyncio task inherits the context of the
    code that creates it, so work started by one trigger logged into that one trigger's log (a
    confirmer's deletes of every task's messages showed in the log of the task whose trigger
    started it, and not in the triggerer's). Public alternative: none; a trigger is not told how
    its logs are routed.
    """
    from structlog.contextvars import clear_contextvars

    context = contextvars.copy_context()
    context.run(clear_contextvars)
    return context


# ----------------------------------------------------------------------------------------------
# Task instance states
# ----------------------------------------------------------------------------------------------


class TaskKey(NamedTuple):
    """The task instance a callback is handed to."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


#: DAG runs named in one ``get_task_states`` request.
STATES_PER_REQUEST = 100


def _state_key(key: TaskKey) -> str:
    # Airflow 3.3.2 names a mapped task instance ``<task_id>_<map_index>`` in the answer.
    return key.task_id if key.map_index < 0 else f"{key.task_id}_{key.map_index}"


async def atask_states(keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
    """
    The states of task instances (``None`` for one not found), read through the supervisor: one
    request per DAG and 100 runs.

    Airflow 3.3.2: ``RuntimeTaskInstance.get_task_states`` (``airflow.sdk.execution_time``), run
    in a thread as the standard provider's ``WorkflowTrigger`` runs it. Public alternative: none
    for a trigger (the Task SDK's ``ti.get_task_states`` needs a running task).
    """
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from asgiref.sync import sync_to_async

    read = sync_to_async(RuntimeTaskInstance.get_task_states)
    by_dag: dict[str, list[TaskKey]] = {}
    for key in keys:
        by_dag.setdefault(key.dag_id, []).append(key)
    states: dict[TaskKey, str | None] = {}
    for dag_id, dag_keys in by_dag.items():
        runs = sorted({key.run_id for key in dag_keys})
        tasks = sorted({key.task_id for key in dag_keys})
        for start in range(0, len(runs), STATES_PER_REQUEST):
            chunk = runs[start : start + STATES_PER_REQUEST]
            found = await read(dag_id=dag_id, run_ids=chunk, task_ids=tasks)
            if not isinstance(found, Mapping):
                raise RuntimeError(f"unexpected answer to a task state look-up: {found!r}")
            for key in dag_keys:
                if key.run_id in chunk:
                    states[key] = (found.get(key.run_id) or {}).get(_state_key(key))
    return states


# ----------------------------------------------------------------------------------------------
# Trigger kwargs
# ----------------------------------------------------------------------------------------------

#: The markers of Airflow's serialization, as themselves and as the stringified enum names.
_VAR_KEYS = ("__var", "Encoding.VAR")
_TYPE_KEYS = ("__type", "Encoding.TYPE")


def decoded_kwarg(value: Any) -> Any:
    """
    A trigger kwarg as it was serialized, undoing the serialization markers Airflow can leave in it.

    Airflow 3.2.1 (and 3.2.0) gives an ``AssetWatcher``'s trigger its nested dicts still wrapped
    as ``{"Encoding.VAR": {...}, "Encoding.TYPE": "dict"}`` (its kwargs pass through two
    serializers: apache/airflow#65973, fixed by #65992 in 3.3.1). Plain values pass unchanged.
    Public alternative: none; from 3.3.1 the kwargs arrive decoded.
    """
    if isinstance(value, dict):
        var = next((k for k in _VAR_KEYS if k in value), None)
        kind = next((k for k in _TYPE_KEYS if k in value), None)
        if var is not None and kind is not None and len(value) == 2:
            inner = decoded_kwarg(value[var])
            return tuple(inner) if value[kind] == "tuple" and isinstance(inner, list) else inner
        return {key: decoded_kwarg(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decoded_kwarg(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------
# Sensors in reschedule mode
# ----------------------------------------------------------------------------------------------


class _RescheduleDateAsDatetime:
    """A task instance whose ``get_first_reschedule_date`` answers a datetime (see below)."""

    def __init__(self, ti: Any) -> None:
        object.__setattr__(self, "_ti", ti)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ti, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ti, name, value)

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return first_reschedule_date(self._ti, context)


def first_reschedule_date(ti: Any, context: Any) -> datetime | None:
    """
    ``ti.get_first_reschedule_date(context)`` as a datetime.

    Airflow 3.0.x and 3.1.0 to 3.1.3 answer with the ISO text under ``airflow dags test`` (the
    Task SDK's client builds the answer with pydantic's ``model_construct``, and the in-process
    supervisor hands it on unparsed: apache/airflow#58777, fixed by #58791 in 3.1.4). Public
    alternative: the same call, from 3.1.4.
    """
    first = ti.get_first_reschedule_date(context)
    return datetime.fromisoformat(first) if isinstance(first, str) else first


def reschedule_context(context: Any) -> Any:
    """
    ``context`` for ``BaseSensorOperator.execute`` in reschedule mode: below Airflow 3.1.4, with a
    task instance whose ``get_first_reschedule_date`` answers a datetime (see
    :func:`first_reschedule_date`), which the base sensor subtracts from the time now; as it is
    from 3.1.4.
    """
    if AIRFLOW_VERSION >= (3, 1, 4):
        return context
    ti = _RescheduleDateAsDatetime(context["ti"])
    return {**context, "ti": ti, "task_instance": ti}


# ----------------------------------------------------------------------------------------------
# Human-in-the-loop requests (Airflow 3.1+)
# ----------------------------------------------------------------------------------------------


def upsert_hitl_detail(**request: Any) -> None:
    """
    Write the running task's human-in-the-loop request (what Airflow's UI lists under Required
    Actions and its REST API answers).

    Airflow 3.1 to 3.3.2: ``airflow.sdk.execution_time.hitl.upsert_hitl_detail``, which the
    standard provider's ``HITLOperator.execute`` calls. Public alternative: ``HITLOperator.execute``
    itself, which then waits on its own (``TaskAwaitingInput`` from 3.3, ``HITLTrigger`` before)
    and so cannot watch the pipeline execution meanwhile.
    """
    from airflow.sdk.execution_time.hitl import upsert_hitl_detail as upsert

    upsert(**request)


def _response_payload(response: Any) -> dict[str, Any] | None:
    if not (response.response_received and response.chosen_options):
        return None
    user = response.responded_by_user
    return {
        "chosen_options": list(response.chosen_options),
        "params_input": dict(response.params_input or {}),
        "responded_at": response.responded_at,
        "responded_by_user": None if user is None else {"id": user.id, "name": user.name},
        "timedout": user is None,
    }


async def ahitl_response(ti_id: Any) -> dict[str, Any] | None:
    """
    The response to a task instance's request, in the payload shape Airflow resumes a task with
    (``HITLDetail.as_resume_event_payload``), or ``None`` while there is none.

    Airflow 3.1 to 3.3.2: ``airflow.sdk.execution_time.hitl.get_hitl_detail_content_detail``,
    run in a thread as the standard provider's ``HITLTrigger`` runs it. Public alternative: none
    for a trigger.
    """
    from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail
    from asgiref.sync import sync_to_async

    return _response_payload(await sync_to_async(get_hitl_detail_content_detail)(ti_id=ti_id))


async def arecord_hitl_response(
    ti_id: Any, chosen_options: list[str], params_input: dict[str, Any]
) -> dict[str, Any]:
    """
    Record a response on no one's behalf (a timeout's default outcome, or a stopped pipeline's),
    so that the request leaves Required Actions and a later answer gets 409; returns the
    response as recorded (a person's answer recorded first wins).

    Airflow 3.1 to 3.3.2: ``airflow.sdk.execution_time.hitl.update_hitl_detail_response``, as
    ``HITLTrigger`` records a timeout's defaults. Public alternative: none for a trigger.
    """
    from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail, update_hitl_detail_response
    from asgiref.sync import sync_to_async

    before = _response_payload(await sync_to_async(get_hitl_detail_content_detail)(ti_id=ti_id))
    if before is not None:
        return before
    try:
        recorded = await sync_to_async(update_hitl_detail_response)(
            ti_id=ti_id, chosen_options=chosen_options, params_input=params_input
        )
    except Exception:
        # Airflow answers 409 to a second response: a person answered in between.
        after = _response_payload(await sync_to_async(get_hitl_detail_content_detail)(ti_id=ti_id))
        if after is None:
            raise
        return after
    payload = _response_payload(recorded)
    return (
        payload
        if payload is not None
        else {
            "chosen_options": chosen_options,
            "params_input": params_input,
            "responded_at": recorded.responded_at,
            "responded_by_user": None,
            "timedout": True,
        }
    )


# ----------------------------------------------------------------------------------------------
# Secrets masking
# ----------------------------------------------------------------------------------------------


_MASKER_MODULES = ("airflow.sdk._shared.secrets_masker", "airflow.sdk.execution_time.secrets_masker")


def mask_secret(secret: str) -> None:
    """
    Register a secret with the secrets masker of this process and its supervisor's.

    Public: ``airflow.sdk.log.mask_secret`` (Task SDK 1.1+); in Airflow 3.0,
    ``airflow.sdk.execution_time.secrets_masker.mask_secret``, which tells the supervisor before
    it masks here, and Airflow 3.0 logs the message it sends (``MaskSecret(value=...)``, at
    debug level): so the secret is masked here first.
    """
    _first("_secrets_masker", *_MASKER_MODULES)().add_mask(secret)
    _first("mask_secret", "airflow.sdk.log", "airflow.sdk.execution_time.secrets_masker")(secret)


def register_tokens(tokens: Iterable[str]) -> None:
    """
    Register many callback tokens with this process's secrets masker, compiling its pattern once.

    ``SecretsMasker.add_mask`` recompiles one regular expression of *every* secret it knows for
    each new secret, so registering N tokens costs O(N^2): with the public call, 16 s of
    event-loop time for 1,000 tokens against 0.05 s here (``make bench BENCH_ARGS="--only
    masking"``). So each token's patterns are computed by ``add_mask`` itself on a scratch
    masker (the same adaptations, lengths and exclusions), then merged into the process's
    masker and compiled once, before it is published (a log line never meets a half-updated
    masker).

    Airflow 3.3.2 (``airflow.sdk._shared.secrets_masker``; 3.0 ``airflow.sdk.execution_time
    .secrets_masker``): ``_secrets_masker()``, ``SecretsMasker.patterns`` and ``.replacer``.
    Public alternative: ``mask_secret`` per token (used when the masker is not the one this was
    written for).
    """
    tokens = [t for t in tokens if t]
    if not tokens:
        return
    masker_class = _first("SecretsMasker", *_MASKER_MODULES)
    masker = _first("_secrets_masker", *_MASKER_MODULES)()
    known = getattr(masker, "patterns", None)
    if not isinstance(masker, masker_class) or not isinstance(known, set):
        for token in tokens:
            masker.add_mask(token)
        return
    new: set[str] = set()
    for token in tokens:
        scratch = masker_class()
        scratch.add_mask(token)
        new |= scratch.patterns - known
    if new:
        replacer = re.compile("|".join(known | new))
        known.update(new)
        masker.replacer = replacer


async def amask_secrets(tokens: Sequence[str]) -> None:
    """
    Register callback tokens with this process's secrets masker (compiled once, as
    :func:`register_tokens`) and with its supervisor's (a triggerer's logs are written there).

    Public: ``airflow.sdk.log.amask_secret`` (Task SDK 1.3+, Airflow 3.3), called with every
    token at once after they are registered here, so it finds nothing new to compile in this
    process and only tells the supervisor (one message for all). Before 3.3 there is no async
    call: the supervisor is sent the same ``MaskSecret`` message its comms' ``asend`` carries
    (the sync ``mask_secret`` cannot run on a trigger's event loop).
    """
    tokens = [t for t in tokens if t]
    if not tokens:
        return
    register_tokens(tokens)
    try:
        amask_secret = _first("amask_secret", "airflow.sdk.log")
    except ImportError:
        await _tell_supervisor(list(tokens))
    else:
        await amask_secret(list(tokens))


async def _tell_supervisor(tokens: list[str]) -> None:
    """
    Airflow 3.0 to 3.2: ``task_runner.SUPERVISOR_COMMS.asend(MaskSecret(...))``, as
    ``amask_secret`` does from 3.3. A task's comms in Airflow 3.0 have no ``asend`` (a trigger
    run inline in a task, as ``airflow dags test`` runs it): there the sync ``send``, a short
    request to its supervisor. Outside a triggerer or task there is no supervisor to tell.
    """
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None:
        return
    from airflow.sdk.execution_time.comms import MaskSecret

    message = MaskSecret(value=tokens)
    try:
        if (asend := getattr(comms, "asend", None)) is not None:
            await asend(message)
        else:
            comms.send(message)
    except Exception as err:  # as amask_secret: masking locally is what matters most
        log.warning("Could not tell the supervisor of %d tokens to mask: %s", len(tokens), err)


def masker_module() -> Any:
    """The module of this Airflow's secrets masker (tests put a fresh masker in its place)."""
    for name in _MASKER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_secrets_masker"):
            return module
    raise ImportError(f"none of {', '.join(_MASKER_MODULES)} has _secrets_masker")


def masker_class() -> Any:
    """This Airflow's ``SecretsMasker`` class."""
    return _first("SecretsMasker", *_MASKER_MODULES)


def masker_patterns() -> set[str]:
    """The escaped patterns this process's secrets masker knows (for tests and checks)."""
    return set(getattr(_first("_secrets_masker", *_MASKER_MODULES)(), "patterns", set()))


def redact(value: Any) -> Any:
    """Redact secrets the masker knows in ``value``. Public: ``airflow.sdk.log.redact`` (1.1+)."""
    return _first("redact", "airflow.sdk.log", *_MASKER_MODULES)(value)
