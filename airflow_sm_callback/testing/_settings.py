"""
Step-engine settings, and the error the engine answers with.

Where the SageMaker documentation leaves a behaviour open the engine makes it a setting
(:class:`EngineSettings`); every default is the strict choice. :class:`EngineError` carries the
service's error code, so that the SageMaker response class can answer with exactly that code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DEFAULT_SETTINGS", "EngineError", "EngineSettings"]


class EngineError(Exception):
    """
    An error the service answers with.

    :param code: the modelled error code (``ValidationException``, ``ResourceNotFound``,
        ``ConflictException``, ``ResourceLimitExceeded``).
    :param message: the human readable message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """
    Behaviour the SageMaker documentation leaves open. Every default is the strict choice.

    :param strict_output_names: reject (``ValidationException``) an output name the step does
        not declare; lenient: accept the close and drop that output.
    :param strict_output_types: reject (``ValidationException``) a value that does not cast to
        the output's declared type; lenient: store it, and fail the execution when a later step
        reads it.
    :param conflict_on_reclose: closing an already closed step with a new
        ``ClientRequestToken`` answers ``ConflictException``; lenient: a success response that
        changes nothing.
    :param conflict_on_stopped_or_failed: closing any step of a ``Stopped`` or ``Failed``
        execution answers ``ConflictException`` (checked before ``conflict_on_reclose``);
        lenient: fall through to the re-close rule.
    :param strict_start_parameters: ``StartPipelineExecution`` rejects a parameter the
        definition does not declare, a value that does not cast to the parameter's type and a
        missing parameter without default; lenient: unknown names are ignored, uncastable values
        are kept as strings, missing ones resolve to an empty string.
    :param step_delay_seconds: time every non-callback step takes before it succeeds; ``0``
        finishes them synchronously inside the request that started them.
    """

    strict_output_names: bool = True
    strict_output_types: bool = True
    conflict_on_reclose: bool = True
    conflict_on_stopped_or_failed: bool = True
    strict_start_parameters: bool = True
    step_delay_seconds: float = 0.0

    def updated(self, changes: Mapping[str, Any]) -> EngineSettings:
        """
        Return a copy with ``changes`` applied, after checking names and types.

        :param changes: setting name to new value.
        :raises EngineError: ``ValidationException`` for an unknown name or a wrong type.
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise EngineError(
                    "ValidationException",
                    f"Unknown setting {name!r}; known settings: {', '.join(sorted(known))}",
                )
            if name == "step_delay_seconds":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise EngineError("ValidationException", "step_delay_seconds must be a number")
                if not math.isfinite(value) or value < 0:
                    raise EngineError("ValidationException", "step_delay_seconds must be >= 0")
                clean[name] = float(value)
            else:
                if not isinstance(value, bool):
                    raise EngineError("ValidationException", f"Setting {name} must be a boolean")
                clean[name] = value
        return dataclasses.replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        """:return: the settings as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


DEFAULT_SETTINGS: Final = EngineSettings()
