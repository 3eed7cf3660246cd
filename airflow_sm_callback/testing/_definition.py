"""
Pipeline definitions: parsing steps and parameters, checking dependencies, evaluating conditions.

Pure functions on a definition's JSON: :func:`load_definition` and :func:`parse_steps` turn it
into :class:`StepDef` records (every dependency known, no cycle), :func:`parse_parameters` types
a start request's parameters against the declared ones, :func:`check_declared_outputs` holds a
close's outputs against the step's declarations, and :func:`evaluate` decides a ``Condition``
step's conditions with the values a resolver gives. Expressions themselves (``Get``,
``Std:Join``) are :mod:`airflow_sm_callback.protocol.expressions`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from airflow_sm_callback.protocol.expressions import ExpressionError, cast_value, referenced_steps, to_text

from ._settings import EngineError

__all__ = [
    "ResolutionError",
    "StepDef",
    "check_declared_outputs",
    "declared_outputs",
    "evaluate",
    "load_definition",
    "parse_parameters",
    "parse_steps",
]

#: An expression in a definition could not be resolved or evaluated.
ResolutionError = ExpressionError

#: Resolves an expression (or a structure holding expressions) to its value.
Resolver = Callable[[Any], Any]


@dataclasses.dataclass
class StepDef:
    """
    One step of a definition.

    :param name: the step's ``Name``.
    :param type: its ``Type`` (``Callback``, ``Condition``, ``Fail``, anything else).
    :param body: the step's JSON as given.
    :param depends_on: its ``DependsOn`` plus every step its expressions read.
    :param parent: ``(condition step, branch)`` for a step inside a condition's ``IfSteps``
        (``True``) or ``ElseSteps`` (``False``).
    :param order: position in the definition (depth first).
    """

    name: str
    type: str
    body: dict[str, Any]
    depends_on: frozenset[str]
    parent: tuple[str, bool] | None
    order: int


# ---------------------------------------------------------------------- loading


def load_definition(definition: str | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """
    :param definition: a pipeline definition, JSON text or parsed.
    :return: the parsed definition and its text.
    :raises EngineError: ``ValidationException`` when it is not a JSON object.
    """
    if isinstance(definition, str):
        try:
            parsed = json.loads(definition)
        except ValueError as exc:
            raise EngineError("ValidationException", f"PipelineDefinition is not valid JSON: {exc}") from None
        text = definition
    else:
        parsed = dict(definition)
        text = json.dumps(parsed)
    if not isinstance(parsed, dict):
        raise EngineError("ValidationException", "PipelineDefinition must be a JSON object")
    return parsed, text


def parse_steps(definition: dict[str, Any]) -> dict[str, StepDef]:
    """
    Every step of a definition, condition branches included.

    :param definition: the parsed definition.
    :return: step name to step, in definition order.
    :raises EngineError: ``ValidationException`` for a malformed step, a duplicate name, an
        unknown dependency or a cycle.
    """
    steps: dict[str, StepDef] = {}

    def visit(items: Any, parent: tuple[str, bool] | None) -> None:
        if not isinstance(items, list):
            raise EngineError("ValidationException", "PipelineDefinition: Steps must be a list")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
                raise EngineError("ValidationException", "PipelineDefinition: every step needs a Name")
            name = item["Name"]
            kind = str(item.get("Type", ""))
            if name in steps:
                raise EngineError("ValidationException", f"PipelineDefinition: duplicate step name {name!r}")
            depends = item.get("DependsOn") or []
            if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
                raise EngineError(
                    "ValidationException", f"PipelineDefinition: DependsOn of {name} is invalid"
                )
            arguments = item.get("Arguments") or {}
            if kind == "Condition":
                if not isinstance(arguments, dict):
                    raise EngineError(
                        "ValidationException", f"PipelineDefinition: Arguments of {name} must be an object"
                    )
                refs = referenced_steps(arguments.get("Conditions") or [])
            else:
                refs = referenced_steps(item)
            steps[name] = StepDef(
                name=name,
                type=kind,
                body=item,
                depends_on=frozenset(depends) | frozenset(refs - {name}),
                parent=parent,
                order=len(steps),
            )
            if kind == "Condition":
                visit(arguments.get("IfSteps") or [], (name, True))
                visit(arguments.get("ElseSteps") or [], (name, False))

    visit(definition.get("Steps") or [], None)
    for step in steps.values():
        missing = sorted(step.depends_on - steps.keys())
        if missing:
            raise EngineError(
                "ValidationException",
                f"PipelineDefinition: step {step.name} depends on unknown step(s) {', '.join(missing)}",
            )
    _check_acyclic(steps)
    return steps


def _check_acyclic(steps: dict[str, StepDef]) -> None:
    state: dict[str, int] = {}

    def edges(step: StepDef) -> set[str]:
        result = set(step.depends_on)
        if step.parent is not None:
            result.add(step.parent[0])
        return result

    for root, root_step in steps.items():
        if state.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges(root_step)))]
        state[root] = 1
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[name] = 2
                stack.pop()
                continue
            if state.get(child) == 1:
                raise EngineError(
                    "ValidationException", f"PipelineDefinition: steps {name} and {child} form a cycle"
                )
            if not state.get(child):
                state[child] = 1
                stack.append((child, iter(edges(steps[child]))))


# ---------------------------------------------------------------------- parameters and outputs


def parse_parameters(
    definition: dict[str, Any], given: list[dict[str, Any]], *, strict: bool
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """
    A start request's ``PipelineParameters`` against the definition's ``Parameters``.

    :param definition: the parsed definition.
    :param given: ``[{"Name", "Value"}]`` from the request.
    :param strict: the ``strict_start_parameters`` setting.
    :return: name to typed value (given, else default), and ``[{"Name", "Value"}]`` as text.
    :raises EngineError: ``ValidationException`` for an entry without a name and, when strict,
        an undeclared parameter, a missing one without default or a value that does not cast.
    """
    declared: dict[str, dict[str, Any]] = {}
    for item in definition.get("Parameters") or []:
        if isinstance(item, dict) and isinstance(item.get("Name"), str):
            declared[item["Name"]] = item
    values: dict[str, Any] = {}
    for entry in given:
        if not isinstance(entry, dict) or not isinstance(entry.get("Name"), str):
            raise EngineError("ValidationException", "PipelineParameters entries need a Name")
        name = entry["Name"]
        value = entry.get("Value", "")
        if name not in declared:
            if strict:
                raise EngineError(
                    "ValidationException",
                    f"PipelineParameters: parameter {name!r} is not defined in the pipeline",
                )
            continue
        values[name] = value
    typed: dict[str, Any] = {}
    listed: list[dict[str, str]] = []
    for name, spec in declared.items():
        type_name = spec.get("Type", "String")
        if name in values:
            raw: Any = values[name]
        elif "DefaultValue" in spec:
            raw = spec["DefaultValue"]
        else:
            if strict:
                raise EngineError(
                    "ValidationException",
                    f"PipelineParameters: parameter {name!r} has no default and was not given",
                )
            raw = ""
        try:
            typed[name] = cast_value(raw, type_name)
        except ValueError as exc:
            if strict:
                raise EngineError(
                    "ValidationException",
                    f"PipelineParameters: value of parameter {name!r} is not a valid {type_name}: {exc}",
                ) from None
            typed[name] = raw
        listed.append({"Name": name, "Value": to_text(raw)})
    return typed, listed


def declared_outputs(step: StepDef) -> dict[str, str]:
    """:return: the step's declared ``OutputParameters``: name to ``OutputType``."""
    declared: dict[str, str] = {}
    for item in step.body.get("OutputParameters") or []:
        if isinstance(item, dict) and isinstance(item.get("OutputName"), str):
            declared[item["OutputName"]] = str(item.get("OutputType", "String"))
    return declared


def check_declared_outputs(
    step: StepDef, outputs: list[dict[str, str]], *, strict_names: bool, strict_types: bool
) -> list[dict[str, str]]:
    """
    A close's outputs against the step's declarations.

    :param step: the callback step.
    :param outputs: ``[{"Name", "Value"}]``, already checked field by field.
    :param strict_names: the ``strict_output_names`` setting.
    :param strict_types: the ``strict_output_types`` setting.
    :return: the outputs to store (undeclared ones dropped when not strict).
    :raises EngineError: ``ValidationException`` naming the output, when strict.
    """
    declared = declared_outputs(step)
    kept: list[dict[str, str]] = []
    for output in outputs:
        name = output["Name"]
        if name not in declared:
            if strict_names:
                raise EngineError(
                    "ValidationException",
                    f"OutputParameters: output {name!r} is not declared by step {step.name} "
                    f"(declared: {', '.join(sorted(declared)) or 'none'})",
                )
            continue
        type_name = declared[name]
        if strict_types:
            try:
                cast_value(output["Value"], type_name)
            except ValueError:
                raise EngineError(
                    "ValidationException",
                    f"OutputParameters: value {output['Value']!r} of output {name!r} "
                    f"is not a valid {type_name}",
                ) from None
        kept.append(output)
    return kept


# ---------------------------------------------------------------------- conditions

_COMPARISONS: Final = frozenset(
    {"Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"}
)


def evaluate(condition: Any, resolve: Resolver) -> bool:
    """
    Decide one condition of a ``Condition`` step.

    :param condition: ``{"Type": "Equals" | ... | "In" | "Not" | "Or" | "And", ...}``.
    :param resolve: resolves the expressions in its values.
    :return: whether it holds.
    :raises ResolutionError: for a malformed condition or values that cannot be compared.
    """
    if not isinstance(condition, dict):
        raise ResolutionError("a condition must be an object")
    kind = condition.get("Type")
    if kind in _COMPARISONS:
        left = resolve(condition.get("LeftValue"))
        right = resolve(condition.get("RightValue"))
        return _compare(str(kind), left, right)
    if kind == "In":
        query = resolve(condition.get("QueryValue"))
        values = resolve(condition.get("Values") or [])
        if not isinstance(values, list):
            raise ResolutionError("In: Values must be a list")
        return any(_compare("Equals", query, value) for value in values)
    if kind == "Not":
        return not evaluate(condition.get("Expression"), resolve)
    if kind == "Or":
        return any(evaluate(c, resolve) for c in condition.get("Conditions") or [])
    if kind == "And":
        return all(evaluate(c, resolve) for c in condition.get("Conditions") or [])
    raise ResolutionError(f"unsupported condition type {kind!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(kind: str, left: Any, right: Any) -> bool:
    if kind == "Equals":
        if _is_number(left) and _is_number(right):
            return bool(left == right)
        return type(left) is type(right) and bool(left == right)
    comparable = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise ResolutionError(f"{kind}: cannot compare {left!r} with {right!r}")
    if kind == "GreaterThan":
        return bool(left > right)
    if kind == "GreaterThanOrEqualTo":
        return bool(left >= right)
    if kind == "LessThan":
        return bool(left < right)
    return bool(left <= right)
