"""The compiled struct codec (``pipeline/kafkawire.py``) against aiokafka's own, on every struct class
aiokafka defines: the same bytes for the same values, the same values (and the same bytes consumed) for
the same bytes, and an error for input aiokafka refuses, truncated or corrupted."""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
from collections.abc import Iterator
from typing import Any

import aiokafka.protocol
import pytest
from aiokafka.protocol import types as t
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
from aiokafka.protocol.message import Message
from aiokafka.protocol.struct import Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgestream.pipeline import kafkawire

for _module in pkgutil.iter_modules(aiokafka.protocol.__path__):
    importlib.import_module(f"aiokafka.protocol.{_module.name}")


def _subclasses(cls: type[Struct]) -> Iterator[type[Struct]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


CLASSES = sorted(
    {c for c in _subclasses(Struct) if c.__module__.startswith("aiokafka.") and not inspect.isabstract(c)},
    key=lambda c: (c.__module__, c.__name__),
)
ENCODE, DECODE = kafkawire._ORIGINAL

INTS = {
    t.Int8: st.integers(-(2**7), 2**7 - 1),
    t.Int16: st.integers(-(2**15), 2**15 - 1),
    t.Int32: st.integers(-(2**31), 2**31 - 1),
    t.Int64: st.integers(-(2**63), 2**63 - 1),
    t.UInt32: st.integers(0, 2**32 - 1),
}


def values(field: Any) -> st.SearchStrategy[Any]:
    """Values aiokafka can encode for ``field``."""
    if field in INTS:
        return INTS[field]
    if field is t.Float64:
        return st.floats(allow_nan=False)
    if field is t.Boolean:
        return st.booleans()
    if field is t.Bytes:
        return st.none() | st.binary(max_size=12)
    if field is t.TaggedFields:
        return st.dictionaries(st.integers(1, 40), st.binary(max_size=3), max_size=2)
    if isinstance(field, t.String):
        return st.none() | st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
    if isinstance(field, t.Array):
        return st.none() | st.lists(values(field.array_of), max_size=3)
    if isinstance(field, t.Schema):
        return st.tuples(*(values(f) for f in field.fields))
    raise AssertionError(f"no strategy for {field!r}")


def built(cls: type[Struct], fields: list[Any]) -> Struct:
    """An instance of ``cls`` holding ``fields`` (as a decoded one does, whatever its ``__init__``)."""
    made = object.__new__(cls)
    made.__dict__.update(zip(cls.SCHEMA.names, fields, strict=True))
    return made


def outcome(decode: Any, cls: type[Struct], raw: bytes) -> tuple[str, Any, int]:
    """What decoding ``raw`` as ``cls`` gave: the values and the bytes consumed, or that it raised."""
    stream = io.BytesIO(raw)
    try:
        made = decode(cls, stream)
    except TypeError:  # a class whose __init__ does not take its fields (request headers): both do
        return ("type_error", None, 0)
    except Exception:  # aiokafka's raise ValueError, or struct.error from its varints
        return ("error", None, 0)
    return ("ok", [made.__dict__[name] for name in cls.SCHEMA.names], stream.tell())


def compiled_decode(cls: type[Struct], data: Any) -> Struct:
    codec = kafkawire.compile_struct(cls)
    assert codec is not None
    return codec[1](data)


def test_every_struct_aiokafka_defines_is_compiled_but_one_that_codes_itself() -> None:
    assert len(CLASSES) > 200
    skipped = [cls for cls in CLASSES if kafkawire.compile_struct(cls) is None]
    assert skipped == [Message]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_codec_writes_and_reads_what_aiokafka_does(cls: type[Struct], data: st.DataObject) -> None:
    codec = kafkawire.compile_struct(cls)
    if codec is None:
        assert cls is Message
        return
    encode, decode = codec
    instance = built(cls, [data.draw(values(f)) for f in cls.SCHEMA.fields])
    raw = ENCODE(instance)
    assert encode(instance) == raw
    expected = outcome(DECODE.__func__, cls, raw)
    assert outcome(lambda c, d: decode(d), cls, raw) == expected
    if expected[0] == "ok":
        assert decode(raw) == DECODE.__func__(cls, raw)  # from bytes as from a stream
        # Read from the middle of a stream, as aiokafka reads a response after its header.
        ours, theirs = io.BytesIO(b"head" + raw + b"tail"), io.BytesIO(b"head" + raw + b"tail")
        ours.seek(4)
        theirs.seek(4)
        assert decode(ours) == DECODE.__func__(cls, theirs)
        assert ours.read() == theirs.read()
    cut = data.draw(st.integers(0, max(0, len(raw) - 1)), label="truncated at")
    assert outcome(lambda c, d: decode(d), cls, raw[:cut]) == outcome(DECODE.__func__, cls, raw[:cut])
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1), label="corrupted at")
        corrupt = raw[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + raw[at + 1 :]
        assert outcome(lambda c, d: decode(d), cls, corrupt) == outcome(DECODE.__func__, cls, corrupt)


@pytest.mark.parametrize(
    "bad",
    [
        [None, 1, 1, 1, 0, 0, -1, [], [], ""],
        [2**31, 1, 1, 1, 0, 0, -1, [], [], ""],
        [0, 1, 1, 1, 0, 0, -1, [("t", [(0, 0)])], [], ""],
    ],
    ids=["none_for_an_int", "out_of_range", "short_partition_tuple"],
)
def test_a_value_aiokafka_cannot_encode_is_refused_as_it_refuses_it(bad: list[Any]) -> None:
    codec = kafkawire.compile_struct(FetchRequest_v11)
    assert codec is not None
    instance = built(FetchRequest_v11, bad)
    refused = r"Error encountered when attempting to (convert|encode)|field count does not match"
    with pytest.raises(ValueError, match=refused):
        ENCODE(instance)
    with pytest.raises(ValueError, match=refused):
        codec[0](instance)


def test_install_routes_every_struct_through_the_compiled_codec_and_uninstall_restores_aiokafkas() -> None:
    was = kafkawire.installed()
    response = FetchResponse_v11(0, 0, 7, [("topic", [(0, 0, 10, 10, 0, [(5, 3)], -1, b"records")])])
    try:
        kafkawire.uninstall()
        assert not kafkawire.installed()
        raw = response.encode()
        message = Message(value=b"value", key=b"key", magic=1, attributes=0, crc=0, timestamp=5)
        message_raw = message.encode()
        kafkawire.install()
        kafkawire.install()  # idempotent
        assert kafkawire.installed()
        assert Struct.__dict__["encode"] is not ENCODE
        assert response.encode() == raw
        decoded = FetchResponse_v11.decode(io.BytesIO(raw))
        assert type(decoded) is FetchResponse_v11
        assert decoded == response
        assert decoded.topics[0][1][0][7] == b"records"
        assert message.encode() == message_raw  # a class that codes itself keeps its own code
        assert Message.decode(message_raw) == message
    finally:
        (kafkawire.install if was else kafkawire.uninstall)()


class _Opaque(AbstractType[int]):  # type: ignore[misc]
    """A type the compiler does not know."""

    @classmethod
    def encode(cls, value: int) -> bytes:
        return bytes([value])

    @classmethod
    def decode(cls, data: io.BytesIO) -> int:
        return data.read(1)[0]


class _WithOpaque(Struct):  # type: ignore[misc]
    SCHEMA = t.Schema(("a", t.Int32), ("b", _Opaque))


def test_a_struct_with_a_type_not_compiled_keeps_aiokafkas_codec() -> None:
    assert kafkawire.compile_struct(_WithOpaque) is None
    was = kafkawire.installed()
    try:
        kafkawire.install()
        raw = _WithOpaque(1, 2).encode()
        assert raw == b"\x00\x00\x00\x01\x02"
        assert _WithOpaque.decode(io.BytesIO(raw)) == _WithOpaque(1, 2)
    finally:
        (kafkawire.install if was else kafkawire.uninstall)()


def test_a_buffer_cut_inside_a_string_or_bytes_says_underrun() -> None:
    raw = FetchResponse_v11(0, 0, 7, [("topic", [(0, 0, 10, 10, 0, [], -1, b"records")])]).encode()
    with pytest.raises(ValueError, match="underrun decoding Bytes"):
        compiled_decode(FetchResponse_v11, io.BytesIO(raw[:-2]))
    with pytest.raises(ValueError, match="underrun decoding string"):
        compiled_decode(FetchResponse_v11, io.BytesIO(raw[:16]))


@given(
    st.binary(max_size=8) | st.lists(st.integers(0x80, 0xFF), max_size=7).map(lambda b: bytes(b) + b"\x01")
)
def test_a_varint_is_read_as_aiokafka_reads_it(raw: bytes) -> None:
    stream = io.BytesIO(raw)
    try:
        expected: tuple[int, int] | None = (t.UnsignedVarInt32.decode(stream), stream.tell())
    except Exception:  # struct.error when it runs out, ValueError past 32 bits
        expected = None
    try:
        got: tuple[int, int] | None = kafkawire._uvarint(raw, 0)
    except (ValueError, IndexError):
        got = None
    assert got == expected
    if expected is not None:
        assert kafkawire._uvarint_bytes(expected[0]) == t.UnsignedVarInt32.encode(expected[0])
