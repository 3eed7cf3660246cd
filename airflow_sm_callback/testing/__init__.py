"""
Test helpers: a local emulator of SageMaker Pipelines' callback side over real HTTP.

``from airflow_sm_callback.testing import CallbackEmulator``; see :mod:`.emulator` and
``README.md`` in this directory. Nothing here imports Airflow; moto is imported only when an
emulator is started in this process.
"""

from __future__ import annotations

from .emulator import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    FINISHED_STATUSES,
    CallbackEmulator,
    EmulatorError,
    RequestRecord,
)

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_REGION",
    "FINISHED_STATUSES",
    "CallbackEmulator",
    "EmulatorError",
    "RequestRecord",
]
