"""
Where the package touches Airflow: only ``_airflow.py`` reaches past the public surface, and the
protocol imports no Airflow at all.

The public surface: the Task SDK's top-level ``airflow.sdk``, ``airflow.providers.common.compat``,
and the providers' public classes (the amazon provider's hooks, links, operators, sensors and
triggers; the standard provider's operators and sensors). Everything else (``airflow.triggers``,
``airflow.jobs``, ``airflow.sdk.execution_time``, ``airflow.sdk._shared``, ``airflow.sdk.bases``,
``airflow.sdk.log``, a private name of any module) goes through ``airflow_sm_callback/_airflow.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_sm_callback"
BOUNDARY = PACKAGE / "_airflow.py"

PUBLIC = (
    re.compile(r"airflow\.sdk"),
    re.compile(r"airflow\.providers\.common\.compat(\.[a-z][a-z0-9_]*)*"),
    re.compile(
        r"airflow\.providers\.amazon\.aws\.(hooks|links|operators|sensors|triggers)(\.[a-z][a-z0-9_]*)*"
    ),
    re.compile(r"airflow\.providers\.standard\.(operators|sensors)(\.[a-z][a-z0-9_]*)*"),
)
MODULE_TEXT = re.compile(r"airflow(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def reaches(source: str) -> Iterator[str]:
    """Every use of Airflow in ``source`` that is not its public surface."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module, names = node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "airflow" and not any(p.fullmatch(alias.name) for p in PUBLIC):
                    yield f"line {node.lineno}: import {alias.name}"
            continue
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and MODULE_TEXT.fullmatch(node.value)
        ):
            if not any(p.fullmatch(node.value) for p in PUBLIC):
                yield f"line {node.lineno}: the text {node.value!r}"
            continue
        else:
            continue
        if module.split(".")[0] != "airflow":
            continue
        if not any(p.fullmatch(module) for p in PUBLIC):
            yield f"line {node.lineno}: from {module} import {', '.join(names)}"
        for name in names:
            if name.startswith("_"):
                yield f"line {node.lineno}: from {module} import {name} (a private name)"


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != BOUNDARY)


def test_only_the_boundary_module_reaches_past_airflow_s_public_surface() -> None:
    found = {
        str(path.relative_to(PACKAGE)): list(reaches(path.read_text()))
        for path in modules()
        if list(reaches(path.read_text()))
    }
    assert found == {}, f"Airflow internals used outside _airflow.py: {found}"


def test_the_boundary_module_is_where_the_internals_are() -> None:
    # The check above is meaningful: the boundary itself is full of what it forbids elsewhere.
    found = list(reaches(BOUNDARY.read_text()))
    assert any("airflow.triggers" in item for item in found)
    assert any("_secrets_masker" in item or "execution_time" in item for item in found)


@pytest.mark.parametrize(
    "source",
    [
        "from airflow.sdk._shared.secrets_masker import _secrets_masker",
        "from airflow.sdk.execution_time import task_runner",
        "from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR",
        "import airflow.jobs.triggerer_job_runner",
        "from airflow.triggers.base import TriggerEvent",
        "from airflow.providers.standard.decorators.python import _PythonDecoratedOperator",
        "from airflow.providers.amazon.aws.utils.mixins import AwsBaseHookMixin",
        "import sys\nsys.modules.get('airflow.jobs.triggerer_job_runner')",
    ],
)
def test_a_reach_past_the_surface_is_caught(source: str) -> None:
    assert list(reaches(source))


@pytest.mark.parametrize(
    "source",
    [
        "from airflow.sdk import BaseOperator, Context",
        "from airflow.providers.common.compat.sdk import AirflowException, mask_secret",
        "from airflow.providers.common.compat.triggers import BaseEventTrigger",
        "from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook",
        "from airflow.providers.standard.operators.python import PythonOperator",
        '"""Uses airflow.triggers.shared_stream, in words only."""',
    ],
)
def test_the_public_surface_passes(source: str) -> None:
    assert not list(reaches(source))


def test_the_protocol_imports_no_airflow_and_no_aws_sdk() -> None:
    for path in sorted((PACKAGE / "protocol").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
            elif isinstance(node, ast.Import):
                top = node.names[0].name.split(".")[0]
            else:
                continue
            assert top not in {"airflow", "boto3", "botocore", "aiobotocore"}, f"{path.name} imports {top}"
