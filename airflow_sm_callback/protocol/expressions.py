"""
Pipeline definitions, in plain Python: typed values and ``Get`` expressions as SageMaker resolves them.

Used by the hook to rebuild a callback step's arguments from an execution's state (when a
retried task recovers its token without the message) and by the emulator's step engine.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

__all__ = [
    "OUTPUT_REF_RE",
    "STEP_REF_RE",
    "ExpressionError",
    "cast_value",
    "find_step",
    "referenced_steps",
    "resolve",
    "to_text",
    "walk_steps",
]

_INTEGER_RE: Final = re.compile(r"-?[0-9]+")
#: ``Steps.<name>.OutputParameters['<output>']`` (quotes may be single or double).
OUTPUT_REF_RE: Final = re.compile(r"Steps\.([^.\[\]]+)\.OutputParameters\[(['\"])(.+)\2\]")
#: Any reference to a step's properties (``match`` it against a ``Get`` path).
STEP_REF_RE: Final = re.compile(r"Steps\.([^.\[\]]+)")


class ExpressionError(ValueError):
    """An expression that cannot be resolved (unknown parameter, output not set, bad shape)."""


def cast_value(value: Any, type_name: str) -> Any:
    """
    Cast a value (as received, usually a string) to a declared parameter or output type.

    Integer: a decimal string (``"42"``, ``"-3"``; not ``"4.0"``) or an int. Float: anything
    :func:`float` accepts that is finite. Boolean: ``"true"``/``"false"`` in any case, or a bool.
    String: as it is (non-strings are turned into their text).

    :param value: the value to cast.
    :param type_name: ``String``, ``Integer``, ``Float`` or ``Boolean``.
    :return: the typed value.
    :raises ValueError: when the value does not cast.
    """
    if type_name == "String":
        return value if isinstance(value, str) else to_text(value)
    if type_name == "Integer":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an Integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INTEGER_RE.fullmatch(value):
            return int(value)
        raise ValueError(f"{value!r} is not an Integer")
    if type_name == "Float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a Float")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a Float") from None
        if not math.isfinite(result):
            raise ValueError(f"{value!r} is not a finite Float")
        return result
    if type_name == "Boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{value!r} is not a Boolean")
    raise ValueError(f"unknown type {type_name!r}")


def to_text(value: Any) -> str:
    """Render a resolved value as SageMaker renders it inside strings (``Std:Join``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def resolve(value: Any, get: Callable[[str], Any]) -> Any:
    """
    Resolve the expressions in ``value``: ``{"Get": path}`` through ``get(path)`` and
    ``{"Std:Join": {"On", "Values"}}``; other ``Std:`` functions become a placeholder string.

    :raises ExpressionError: for a malformed ``Std:Join`` (``get`` raises its own errors).
    """
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "Get" and isinstance(inner, str):
                return get(inner)
            if key == "Std:Join":
                if not isinstance(inner, dict):
                    raise ExpressionError("Std:Join needs an object with On and Values")
                separator = to_text(resolve(inner.get("On", ""), get))
                items = resolve(inner.get("Values") or [], get)
                if not isinstance(items, list):
                    raise ExpressionError("Std:Join Values must be a list")
                return separator.join(to_text(item) for item in items)
            if key.startswith("Std:"):
                return f"<{key} placeholder>"
        return {k: resolve(v, get) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(item, get) for item in value]
    return value


def referenced_steps(value: Any) -> set[str]:
    """The names of the steps whose properties ``value`` reads."""
    found: set[str] = set()
    if isinstance(value, dict):
        get = value.get("Get")
        if len(value) == 1 and isinstance(get, str):
            match = STEP_REF_RE.match(get)
            if match:
                found.add(match.group(1))
            return found
        for item in value.values():
            found |= referenced_steps(item)
    elif isinstance(value, list):
        for item in value:
            found |= referenced_steps(item)
    return found


def walk_steps(steps: Any) -> Iterator[dict[str, Any]]:
    """Every step of a definition's ``Steps``, condition branches included."""
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        yield step
        if step.get("Type") == "Condition":
            arguments = step.get("Arguments") or {}
            yield from walk_steps(arguments.get("IfSteps"))
            yield from walk_steps(arguments.get("ElseSteps"))


def find_step(definition: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The step called ``name`` anywhere in a definition."""
    return next((s for s in walk_steps(definition.get("Steps")) if s.get("Name") == name), None)
