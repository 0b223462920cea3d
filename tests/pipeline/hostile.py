"""Hypothesis strategies for hostile records: arbitrary JSON- and msgpack-shaped values, and a valid
record's value with one part replaced by anything (what structure-blind bytes rarely reach)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)

json_values = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
"""Anything ``json.loads`` could return (and NaN, infinities and huge integers)."""

msgpack_values = st.recursive(
    _SCALARS | st.binary(max_size=20) | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5) | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Anything msgpack can carry: maps with text, integer or bytes keys, bytes, 64-bit integers."""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a part of ``value`` (dict keys and list indexes), the root first."""
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


def _dropped(value: Any, path: tuple[Any, ...]) -> Any:
    """``value`` without the part at ``path`` (a dict key or a list item)."""
    parent_path, last = path[:-1], path[-1]
    parent = value
    for step in parent_path:
        parent = parent[step]
    if isinstance(parent, dict):
        smaller: Any = {k: v for k, v in parent.items() if k != last}
    else:
        smaller = [v for i, v in enumerate(parent) if i != last]
    return _replaced(value, parent_path, smaller)


@st.composite
def mutated(draw: st.DrawFn, valid: Any, values: st.SearchStrategy[Any]) -> Any:
    """``valid`` with one part replaced by a value of ``values``, or removed."""
    paths = _paths(valid)
    path = draw(st.sampled_from(paths))
    if path and draw(st.booleans()) and draw(st.booleans()):
        return _dropped(valid, path)
    return _replaced(valid, path, draw(values))
