"""
pytest fixtures for the callback emulator.

Enable with ``pytest_plugins = ["airflow_sm_callback.testing.pytest_plugin"]`` in a
``conftest.py``:

- ``sagemaker_callback_emulator`` (session): one :class:`~.CallbackEmulator`, started once.
  Settings, faults and the request log are shared by every test; call
  :meth:`~.CallbackEmulator.reset` where a test changes them.
- ``callback_queue`` (function): the URL of a fresh standard queue for each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .emulator import CallbackEmulator


@pytest.fixture(scope="session")
def sagemaker_callback_emulator() -> Iterator[CallbackEmulator]:
    """One emulator for the whole session."""
    with CallbackEmulator() as emulator:
        yield emulator


@pytest.fixture
def callback_queue(sagemaker_callback_emulator: CallbackEmulator) -> str:
    """A fresh, empty standard queue; the fixture's value is its URL."""
    return sagemaker_callback_emulator.create_queue(f"callbacks-{uuid.uuid4().hex[:16]}")
