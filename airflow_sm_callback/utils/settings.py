"""
The provider's settings (``[sagemaker_callback]`` in Airflow's configuration) and their defaults.

``resume_hold``: seconds after a sensor defers before its trigger may resume it. A callback that
arrives sooner is claimed at once and held, hidden, until then. It works around a race in
Airflow's scheduler: a task instance that resumes before the scheduler has processed the
deferring process's end is failed ("finished with state success, but the task instance's state
attribute is running"): apache/airflow#66374 (fixed by #66431, in 3.2.2), #67287 (fixed by
#68741 on main), #71580 and #72716 (open; #71579, #72767), and the structural fix proposed in
#73546. The default is chosen per Airflow version and executor from measurement
(docs/reliability.md, "The resume hold"); a sensor's ``resume_hold`` argument comes first, then
the setting, then that default.
"""

from __future__ import annotations

from typing import Final

from airflow_sm_callback import _airflow

__all__ = ["DEFAULT_RESUME_HOLD", "SECTION", "default_resume_hold", "executor_name", "resume_hold"]

#: The configuration section of the provider.
SECTION: Final = "sagemaker_callback"

#: ``(lowest Airflow version, executor or "*") -> seconds``: the last row that applies wins. 20 s
#: everywhere for now: the LocalExecutor needs it, and on the CeleryExecutor, where no race showed
#: at 0, it costs nothing to a callback that comes 20 s or more after the deferral
#: (docs/reliability.md, "The resume hold").
DEFAULT_RESUME_HOLD: Final[tuple[tuple[tuple[int, int, int], str, float], ...]] = (((3, 0, 0), "*", 20.0),)


def executor_name() -> str:
    """The class name of the first executor Airflow is configured with (``LocalExecutor``, ...)."""
    configured = str(_airflow.conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor")
    first = configured.split(",", maxsplit=1)[0].strip()
    first = first.split(":")[-1]  # "alias:path" names an executor by its path
    return first.rsplit(".", 1)[-1] or "LocalExecutor"


def default_resume_hold(version: tuple[int, int, int] | None = None, executor: str | None = None) -> float:
    """The measured default of ``resume_hold`` for an Airflow version and executor (this one's by default)."""
    version = version or _airflow.AIRFLOW_VERSION
    executor = executor or executor_name()
    chosen = DEFAULT_RESUME_HOLD[0][2]
    for lowest, kind, seconds in DEFAULT_RESUME_HOLD:
        if version >= lowest and kind in ("*", executor):
            chosen = seconds
    return chosen


def resume_hold(explicit: float | None = None) -> float:
    """
    The resume hold of a sensor: its own ``resume_hold``, else ``[sagemaker_callback]
    resume_hold``, else :func:`default_resume_hold`.

    :raises ValueError: naming the setting when it is not a number of seconds of 0 or more.
    """
    if explicit is not None:
        value, source = explicit, "resume_hold"
    else:
        configured = _airflow.conf.get(SECTION, "resume_hold", fallback=None)
        if configured is None or str(configured).strip() == "":
            return default_resume_hold()
        value, source = configured, f"[{SECTION}] resume_hold"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise ValueError(f"{source} must be 0 or more seconds, got {value!r}")
    return seconds
