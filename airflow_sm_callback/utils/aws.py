"""
AWS connection parameters as the amazon provider's operators take them, and the one way to build the hook.

Follows :class:`~airflow.providers.amazon.aws.operators.base_aws.AwsBaseOperator`'s shape
(``aws_hook_class``, ``aws_template_fields``, ``_hook_parameters``, a cached ``hook``) without
subclassing it: the amazon provider's base classes import boto3 and the amazon hooks with the
module (about a second, which every DAG file parse and every resumed sensor would pay), while
here the hook class is imported when first used (``tests/unit/test_imports.py``).
"""

from __future__ import annotations

from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

from airflow_sm_callback.utils.masking import mask_tokens_in

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

__all__ = ["AwsCallbackMixin", "aws_template_fields", "build_hook"]


def build_hook(
    *,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    verify: bool | str | None = None,
    botocore_config: dict[str, Any] | None = None,
) -> SageMakerCallbackHook:
    """A :class:`~airflow_sm_callback.hooks.callback.SageMakerCallbackHook` on a connection: every part builds it here."""
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

    return SageMakerCallbackHook(
        aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, config=botocore_config
    )


@cache
def aws_template_fields(*template_fields: str) -> tuple[str, ...]:
    """``template_fields`` with the AWS ones, sorted, as the amazon provider's function of that name."""
    return tuple(sorted({"aws_conn_id", "region_name", "verify"} | set(template_fields)))


class _HookClass:
    """``aws_hook_class``, imported on first access (the amazon provider sets the class itself)."""

    def __get__(self, obj: object, owner: type | None = None) -> type[SageMakerCallbackHook]:
        from airflow_sm_callback.hooks.callback import SageMakerCallbackHook

        return SageMakerCallbackHook


class AwsCallbackMixin:
    """
    AWS connection parameters and a lazily built hook, for the sensor, operators and decorator.

    Rendered template fields are scanned for callback tokens, which are registered with the
    secrets masker before Airflow stores or shows the rendered values.
    """

    aws_hook_class: Any = _HookClass()
    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    botocore_config: dict[str, Any] | None
    template_fields: Any

    def _init_aws(
        self,
        aws_conn_id: str | None,
        region_name: str | None,
        verify: bool | str | None,
        botocore_config: dict[str, Any] | None,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "botocore_config": self.botocore_config,
        }

    @cached_property
    def hook(self) -> SageMakerCallbackHook:
        """The hook on this task's connection (built on first use, never in ``__init__``)."""
        return build_hook(**self._hook_parameters)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]
        for name in self.template_fields:
            mask_tokens_in({name: getattr(self, name, None)})
