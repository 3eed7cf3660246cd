"""Output parameters of ``SendPipelineExecutionStepSuccess``: the service's limits, types and encodings."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from airflow_sm_callback.protocol.tokens import short

#: ``SendPipelineExecutionStepSuccess`` accepts at most this many output parameters.
MAX_OUTPUT_PARAMETERS: Final = 50
#: Longest output parameter name, in characters.
MAX_OUTPUT_NAME: Final = 256
#: Longest output parameter value, in characters.
MAX_OUTPUT_VALUE: Final = 1024


class OutputType(StrEnum):
    """The ``OutputType`` a callback step declares for an output parameter."""

    STRING = "String"
    INTEGER = "Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"


class InvalidOutputParameters(ValueError):
    """
    Output parameters that ``SendPipelineExecutionStepSuccess`` would not accept.

    :attr:`parameter` names the offending output (``None`` for defects of the whole set).
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        self.parameter = parameter
        super().__init__(message)


def _is_numpy_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_" and type(value).__module__ == "numpy"


def _check_text(text: str, what: str, parameter: str | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOutputParameters(
            f"{what} contains characters that are not valid Unicode text (lone surrogates)",
            parameter=parameter,
        ) from None


def encode_scalar(value: Any, *, name: str | None = None) -> str:
    """
    Encode one output value the way the protocol page recommends.

    ``bool`` -> ``"true"``/``"false"``; integers -> decimal; floats -> ``repr`` (finite only);
    strings as they are. ``None``, containers and other types are rejected.

    :raises InvalidOutputParameters: naming the parameter when ``name`` is given.
    """
    label = f"output parameter {name!r}" if name is not None else "value"
    if value is None:
        raise InvalidOutputParameters(
            f"{label} is None; callback outputs cannot be null (send a string such as '' instead)",
            parameter=name,
        )
    if isinstance(value, bool) or _is_numpy_bool(value):
        return "true" if value else "false"
    if isinstance(value, str):
        _check_text(value, label, name)
        return value
    if isinstance(value, numbers.Integral):
        try:
            return str(int(value))
        except ValueError:
            raise InvalidOutputParameters(
                f"{label} is an integer too large to encode", parameter=name
            ) from None
    if isinstance(value, numbers.Real | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidOutputParameters(f"{label} is {number!r}, not a finite number", parameter=name)
        return repr(number)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        raise InvalidOutputParameters(
            f"{label} is a nested value ({type(value).__name__}); callback outputs are scalars "
            "(string, integer, float or boolean)",
            parameter=name,
        )
    raise InvalidOutputParameters(
        f"{label} has type {type(value).__name__}; callback outputs are string, integer, float or boolean",
        parameter=name,
    )


_INT_RE = re.compile(r"[+-]?\d+")


def coerce_output_value(name: str, value: Any, declared: OutputType | str) -> str:
    """
    Convert ``value`` to the wire form of the type the step *declares* for output ``name``.

    Text is parsed (Jinja renders everything to strings unless the DAG renders natively):
    ``"7"`` fits ``Integer``, ``"True"`` fits ``Boolean``, ``"0.5"`` fits ``Float``.

    :raises InvalidOutputParameters: when the value does not fit, naming the output and the type.
    """
    try:
        kind = OutputType(declared)
    except ValueError:
        raise InvalidOutputParameters(
            f"output parameter {name!r} declares unknown OutputType {declared!r}", parameter=name
        ) from None

    def misfit(reason: str = "") -> InvalidOutputParameters:
        shown = short(repr(value), 60)
        return InvalidOutputParameters(
            f"output parameter {name!r} is declared {kind.value} but got {shown}{reason}", parameter=name
        )

    if value is None or isinstance(value, Mapping | list | tuple | set | frozenset):
        encode_scalar(value, name=name)  # raises the precise error
    if kind is OutputType.STRING:
        return encode_scalar(value, name=name)
    if kind is OutputType.BOOLEAN:
        if isinstance(value, bool) or _is_numpy_bool(value):
            return encode_scalar(value, name=name)
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower()
        raise misfit(" (expected true or false)")
    if isinstance(value, bool) or _is_numpy_bool(value):
        raise misfit(" (a boolean is not a number)")
    if kind is OutputType.INTEGER:
        if isinstance(value, numbers.Integral):
            return encode_scalar(value, name=name)
        if isinstance(value, numbers.Real | Decimal):
            number = float(value)
            if math.isfinite(number) and number.is_integer():
                return str(int(number))
            raise misfit(" (not a whole number)")
        if isinstance(value, str):
            text = value.strip()
            if _INT_RE.fullmatch(text) and len(text) <= MAX_OUTPUT_VALUE:
                return str(int(text))
            try:
                number = float(text)
            except ValueError:
                raise misfit() from None
            if math.isfinite(number) and number.is_integer():
                return str(int(number))
            raise misfit(" (not a whole number)")
        raise misfit()
    # Float
    if isinstance(value, numbers.Real | Decimal):
        return encode_scalar(float(value), name=name)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise misfit() from None
        if not math.isfinite(number):
            raise misfit(" (not a finite number)")
        return repr(number)
    raise misfit()


def _iter_pairs(parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Iterable[tuple[Any, Any]]:
    if isinstance(parameters, Mapping):
        yield from parameters.items()
        return
    if isinstance(parameters, str | bytes) or not isinstance(parameters, Sequence):
        raise InvalidOutputParameters(
            "output parameters must be a mapping {name: value} or a list of {'Name', 'Value'}, "
            f"got {type(parameters).__name__}"
        )
    for index, item in enumerate(parameters):
        if not isinstance(item, Mapping) or set(item) != {"Name", "Value"}:
            keys = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
            raise InvalidOutputParameters(
                f"output parameter #{index} must be {{'Name': ..., 'Value': ...}}, got {keys}"
            )
        yield item["Name"], item["Value"]


def encode_output_parameters(
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    declared: Mapping[str, OutputType | str] | None = None,
) -> list[dict[str, str]]:
    """
    Validate and encode output parameters for ``SendPipelineExecutionStepSuccess``.

    :param parameters: ``{name: value}`` or ``[{"Name": ..., "Value": ...}]``.
    :param declared: the step's declared ``{OutputName: OutputType}``. When given, every value is
        converted to its declared type and a name the step does not declare is an error.
    :return: ``[{"Name": name, "Value": text}]`` in the order given.
    :raises InvalidOutputParameters: on the first defect, naming the parameter.
    """
    if parameters is None:
        return []
    pairs = list(_iter_pairs(parameters))
    if len(pairs) > MAX_OUTPUT_PARAMETERS:
        raise InvalidOutputParameters(
            f"{len(pairs)} output parameters given; a callback step accepts at most {MAX_OUTPUT_PARAMETERS}"
        )
    encoded: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if not isinstance(name, str):
            raise InvalidOutputParameters(
                f"output parameter name {short(repr(name), 40)} is a {type(name).__name__}, not a string"
            )
        if not 1 <= len(name) <= MAX_OUTPUT_NAME:
            raise InvalidOutputParameters(
                f"output parameter name {short(name, 40)!r} has {len(name)} characters; "
                f"names have 1 to {MAX_OUTPUT_NAME}",
                parameter=name,
            )
        _check_text(name, "output parameter name", name)
        if name in seen:
            raise InvalidOutputParameters(f"output parameter {name!r} is given twice", parameter=name)
        seen.add(name)
        if declared is not None:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise InvalidOutputParameters(
                    f"output parameter {name!r} is not declared by the callback step (it declares: {known})",
                    parameter=name,
                )
            text = coerce_output_value(name, value, declared[name])
        else:
            text = encode_scalar(value, name=name)
        if len(text) > MAX_OUTPUT_VALUE:
            raise InvalidOutputParameters(
                f"output parameter {name!r} has a value of {len(text)} characters; at most "
                f"{MAX_OUTPUT_VALUE} are allowed",
                parameter=name,
            )
        encoded.append({"Name": name, "Value": text})
    return encoded
