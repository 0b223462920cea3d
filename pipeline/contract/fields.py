"""Strict readers of decoded JSON and msgpack values, for parsers of records another principal writes.

Every parser of such a record must be total: any bytes give a value or the parser's own error, never an
unexpected exception. ``int(x)`` and ``float(x)`` are not enough for that: ``int(1e999)`` raises
``OverflowError``, ``int("12")`` and ``int(True)`` succeed, ``float("nan")`` slips through, and a map
may hold any hashable key. These readers accept exactly one type each, with bounds, and raise only
:class:`FieldError` (a ``ValueError``), which the parser turns into its declared error. :func:`load_json`
and :func:`check_depth` bound nesting without recursion, so a deep record cannot exhaust the stack.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

MAX_INT: Final = 2**63 - 1
"""Largest integer a field may hold by default (Kafka's int64 and msgpack's signed range)."""
MAX_COUNT: Final = 2**53 - 1
"""Largest count (exactly representable as a float, so sums and rates of counts stay finite)."""
MAX_DEPTH: Final = 32
"""Deepest nesting of arrays and maps a record may have (the formats need fewer than 8)."""


class FieldError(ValueError):
    """A field of a decoded record has the wrong type or is out of bounds."""


def integer(value: Any, what: str, *, minimum: int = -MAX_INT - 1, maximum: int = MAX_INT) -> int:
    """``value`` when it is an ``int`` (not a bool) within [minimum, maximum]."""
    if type(value) is not int:
        raise FieldError(f"{what}: expected an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise FieldError(f"{what}: {value if abs(value) < 10**30 else 'a huge integer'} is out of range")
    return value


def count(value: Any, what: str) -> int:
    """A count: an integer in [0, ``MAX_COUNT``]."""
    return integer(value, what, minimum=0, maximum=MAX_COUNT)


def optional_integer(value: Any, what: str, *, minimum: int = -MAX_INT - 1) -> int | None:
    """None, or an :func:`integer`."""
    return None if value is None else integer(value, what, minimum=minimum)


def number(value: Any, what: str) -> float:
    """A finite float (an integer in range is accepted and converted)."""
    if type(value) is int and abs(value) <= MAX_COUNT:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise FieldError(f"{what}: expected a finite number, got {_describe(value)}")
    return value


def text(value: Any, what: str, *, max_chars: int = 1 << 16) -> str:
    """A string of at most ``max_chars`` characters."""
    if type(value) is not str:
        raise FieldError(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise FieldError(f"{what}: longer than {max_chars} characters")
    return value


def binary(value: Any, what: str, *, max_bytes: int = 1 << 16) -> bytes:
    """A byte string of at most ``max_bytes``."""
    if type(value) is not bytes:
        raise FieldError(f"{what}: expected bytes, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise FieldError(f"{what}: longer than {max_bytes} bytes")
    return value


def array(value: Any, what: str) -> list[Any]:
    """A list (a JSON array, a msgpack array)."""
    if type(value) is not list:
        raise FieldError(f"{what}: expected an array, got {type(value).__name__}")
    return value


def mapping(value: Any, what: str) -> dict[Any, Any]:
    """A dict (a JSON object, a msgpack map)."""
    if type(value) is not dict:
        raise FieldError(f"{what}: expected a map, got {type(value).__name__}")
    return value


def field(data: dict[Any, Any], name: str) -> Any:
    """``data[name]``; :class:`FieldError` naming it when absent."""
    if name not in data:
        raise FieldError(f"missing field {name!r}")
    return data[name]


_CONTAINERS: Final = (list, tuple, dict)
"""What nests (msgpack arrays and maps; JSON's)."""


def check_depth(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """:class:`FieldError` when ``value`` nests arrays or maps deeper than ``max_depth`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _CONTAINERS):
            if depth >= max_depth:
                raise FieldError(f"nested deeper than {max_depth} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            # Only containers go on the stack: a sample's 30 floats were 30 tuples pushed and popped.
            stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))


def load_json(value: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in ``value``: UTF-8, no NaN or Infinity, nested at most ``max_depth``.

    The depth is counted on the bytes before parsing (brackets outside strings), so a deep document is
    refused before the parser recurses.
    """
    if type(value) is not bytes:
        raise FieldError(f"expected bytes, got {type(value).__name__}")
    _check_json_depth(value, max_depth)
    try:
        return json.loads(value.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FieldError(f"not JSON: {e}") from e


def dump_json(value: Any) -> bytes:
    """``value`` as compact JSON with sorted keys, ASCII only, no NaN or Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _refuse_constant(name: str) -> Any:
    raise FieldError(f"{name} is not a JSON number")


def _check_json_depth(value: bytes, max_depth: int) -> None:
    depth = 0
    in_string = escaped = False
    for byte in value:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise FieldError(f"nested deeper than {max_depth} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def _describe(value: Any) -> str:
    if type(value) is float:
        return repr(value)
    return type(value).__name__
