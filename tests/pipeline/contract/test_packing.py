"""The kept packer encodes exactly what ``msgpack.packb(..., use_bin_type=True)`` does, refuses what it
refuses, and the call after a refusal is whole."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgestream.pipeline.contract.packing import packb

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)  # past both ends of what msgpack encodes
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=300)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=6)
    ),
    max_leaves=30,
)


def _outcome(encode: object, value: object) -> bytes | type[BaseException]:
    try:
        return encode(value)  # type: ignore[operator, no-any-return]
    except (TypeError, ValueError, OverflowError) as err:
        return type(err)


@given(_VALUES)
@example({"big": 2**64, "after": b"x"})
@example([1, object(), 2])
def test_packs_as_packb_and_the_next_call_is_whole(value: object) -> None:
    expected = _outcome(lambda v: msgpack.packb(v, use_bin_type=True), value)
    assert _outcome(packb, value) == expected
    assert packb({"next": [1, 2.5, b"z"]}) == msgpack.packb({"next": [1, 2.5, b"z"]}, use_bin_type=True)


def test_an_unencodable_value_raises_as_packb_does() -> None:
    with pytest.raises(TypeError):
        packb({"x": object()})
