"""
Airflow's internals, in one place: every use of Airflow outside its public surface goes through here.

The rest of the package imports Airflow only from the public Task SDK (``airflow.sdk``),
``airflow.providers.common.compat`` and the providers' public classes;
``tests/unit/test_airflow_boundary.py`` fails when another module reaches further. Each
function here names the Airflow version it was written against and the public alternative, if
any, so that when a later Airflow changes one of these internals (or an older one lacks it) the
change touches this module only.

Written against Apache Airflow 3.3.2 (Task SDK 1.3.2).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow import __version__ as _AIRFLOW_VERSION_TEXT
from airflow.triggers.base import TriggerEvent
from packaging.version import Version

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_3_PLUS",
    "AdvanceItem",
    "SharedStreamManager",
    "SharedStreamProducer",
    "TaskKey",
    "TriggerEvent",
    "amask_secrets",
    "atask_states",
    "in_triggerer",
    "mask_secret",
    "register_tokens",
]

log = logging.getLogger(__name__)

#: The installed Airflow's version, ``(major, minor, micro)``.
AIRFLOW_VERSION: tuple[int, int, int] = Version(_AIRFLOW_VERSION_TEXT).release[:3]  # type: ignore[assignment]
#: Shared streams in ack mode (``airflow.triggers.shared_stream``) exist from Airflow 3.3.
AIRFLOW_V_3_3_PLUS: bool = AIRFLOW_VERSION >= (3, 3, 0)

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
# Secrets masking
# ----------------------------------------------------------------------------------------------


def mask_secret(secret: str) -> None:
    """
    Register a secret with the secrets masker of this process and its supervisor's.

    Public: ``airflow.providers.common.compat.sdk.mask_secret`` (``airflow.sdk.log.mask_secret``).
    """
    from airflow.providers.common.compat.sdk import mask_secret as public_mask_secret

    public_mask_secret(secret)


def register_tokens(tokens: Iterable[str]) -> None:
    """
    Register many callback tokens with this process's secrets masker, compiling its pattern once.

    ``SecretsMasker.add_mask`` recompiles one regular expression of *every* secret it knows for
    each new secret, so registering N tokens costs O(N^2): with the public call, 16 s of
    event-loop time for 1,000 tokens against 0.1 s here (``make bench BENCH_ARGS="--only
    masking"``). So each token's patterns are computed by ``add_mask`` itself on a scratch
    masker (the same adaptations, lengths and exclusions), then merged into the process's
    masker and compiled once, before it is published (a log line never meets a half-updated
    masker).

    Airflow 3.3.2: ``airflow.sdk._shared.secrets_masker`` (``_secrets_masker()``,
    ``SecretsMasker.patterns`` and ``.replacer``). Public alternative: ``mask_secret`` per token
    (used when the masker is not the one this was written for).
    """
    tokens = [t for t in tokens if t]
    if not tokens:
        return
    from airflow.sdk._shared.secrets_masker import SecretsMasker, _secrets_masker

    masker = _secrets_masker()
    known = getattr(masker, "patterns", None)
    if not isinstance(masker, SecretsMasker) or not isinstance(known, set):
        for token in tokens:
            masker.add_mask(token)
        return
    new: set[str] = set()
    for token in tokens:
        scratch = SecretsMasker()
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

    Public: ``airflow.sdk.log.amask_secret``, called with every token at once after they are
    registered here, so it finds nothing new to compile in this process and only tells the
    supervisor (one message for all).
    """
    tokens = [t for t in tokens if t]
    if not tokens:
        return
    register_tokens(tokens)
    from airflow.sdk.log import amask_secret

    await amask_secret(list(tokens))


def masker_patterns() -> set[str]:
    """The escaped patterns this process's secrets masker knows (for tests and checks)."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    return set(getattr(_secrets_masker(), "patterns", set()))


def redact(value: Any) -> Any:
    """Redact secrets the masker knows in ``value``. Public: ``common.compat.sdk.redact``."""
    from airflow.providers.common.compat.sdk import redact as public_redact

    return public_redact(value)
