"""The approval operator's parts that need no Airflow processes, on every supported Airflow."""

from __future__ import annotations

import runpy
import sys

import pytest

from airflow_sm_callback import _airflow
from tests.system.stack import ROOT

EXAMPLE = ROOT / "example_dags" / "example_sagemaker_callback_approval.py"
NEEDS_3_1 = pytest.mark.skipif(
    not _airflow.AIRFLOW_V_3_1_PLUS, reason="human-in-the-loop tasks need Airflow 3.1"
)


def test_on_airflow_3_0_the_approval_dag_fails_at_parse_saying_it_needs_3_1() -> None:
    sys.modules.pop("airflow_sm_callback.operators.approval", None)
    if _airflow.AIRFLOW_V_3_1_PLUS:
        namespace = runpy.run_path(str(EXAMPLE))
        assert namespace["dag"].dag_id == "example_sagemaker_callback_approval"
        return
    with pytest.raises(
        ImportError, match=r"needs Airflow 3\.1 or newer: it is built on Airflow's human-in-the-loop"
    ):
        runpy.run_path(str(EXAMPLE))


@NEEDS_3_1
def test_bad_arguments_fail_at_parse_naming_them() -> None:
    from airflow_sm_callback.operators.approval import SageMakerCallbackApprovalOperator

    with pytest.raises(ValueError, match="default_outcome must be 'approve', 'reject' or None"):
        SageMakerCallbackApprovalOperator(task_id="a", callback_token="x", default_outcome="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fill_from_response\['approved_by'\] must be one of responded_by"):
        SageMakerCallbackApprovalOperator(
            task_id="a", callback_token="x", fill_from_response={"approved_by": "me"}
        )


@NEEDS_3_1
def test_form_defaults_take_the_declared_types_and_a_misfit_names_the_output() -> None:
    from airflow_sm_callback.operators.approval import _form_value
    from airflow_sm_callback.protocol.outputs import InvalidOutputParameters, OutputType

    assert _form_value("n", "7", OutputType.INTEGER) == 7
    assert _form_value("f", "0.5", OutputType.FLOAT) == 0.5
    assert _form_value("b", "True", OutputType.BOOLEAN) is True
    assert _form_value("s", 3, OutputType.STRING) == "3"
    with pytest.raises(InvalidOutputParameters, match="'n'"):
        _form_value("n", "seven", OutputType.INTEGER)
