"""The provider's settings: ``[sagemaker_callback] resume_hold`` and its per-version, per-executor default."""

from __future__ import annotations

import pytest

from airflow_sm_callback.sensors.callback import SageMakerCallbackSensor
from airflow_sm_callback.utils import settings


@pytest.mark.parametrize(
    ("configured", "name"),
    [
        ("LocalExecutor", "LocalExecutor"),
        ("CeleryExecutor", "CeleryExecutor"),
        ("airflow.providers.celery.executors.celery_executor.CeleryExecutor", "CeleryExecutor"),
        ("CeleryExecutor,KubernetesExecutor", "CeleryExecutor"),
        ("fast:airflow.providers.celery.executors.celery_executor.CeleryExecutor", "CeleryExecutor"),
    ],
)
def test_the_executor_is_named_by_its_class(
    monkeypatch: pytest.MonkeyPatch, configured: str, name: str
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", configured)
    assert settings.executor_name() == name


def test_the_argument_comes_first_then_the_setting_then_the_measured_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW__SAGEMAKER_CALLBACK__RESUME_HOLD", raising=False)
    assert settings.resume_hold() == settings.default_resume_hold()
    monkeypatch.setenv("AIRFLOW__SAGEMAKER_CALLBACK__RESUME_HOLD", "7.5")
    assert settings.resume_hold() == 7.5
    assert settings.resume_hold(0) == 0.0
    monkeypatch.setenv("AIRFLOW__SAGEMAKER_CALLBACK__RESUME_HOLD", "")
    assert settings.resume_hold() == settings.default_resume_hold()


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AIRFLOW__SAGEMAKER_CALLBACK__RESUME_HOLD", value)
    with pytest.raises(ValueError, match=r"\[sagemaker_callback\] resume_hold"):
        settings.resume_hold()


def test_a_bad_argument_fails_the_dag_file_s_parse() -> None:
    with pytest.raises(ValueError, match="resume_hold must be 0 or more seconds"):
        SageMakerCallbackSensor(task_id="wait", queue_url="q", pipeline_name="p", resume_hold=-3)


def test_the_default_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    table = (((3, 0, 0), "*", 20.0), ((3, 2, 2), "LocalExecutor", 5.0), ((3, 3, 0), "CeleryExecutor", 0.0))
    monkeypatch.setattr(settings, "DEFAULT_RESUME_HOLD", table)
    assert settings.default_resume_hold((3, 0, 6), "LocalExecutor") == 20.0
    assert settings.default_resume_hold((3, 2, 2), "LocalExecutor") == 5.0
    assert settings.default_resume_hold((3, 2, 2), "CeleryExecutor") == 20.0
    assert settings.default_resume_hold((3, 3, 2), "CeleryExecutor") == 0.0
    assert settings.default_resume_hold((3, 3, 2), "LocalExecutor") == 5.0
