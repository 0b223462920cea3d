"""aiokafka's request and response structs encoded and decoded by functions compiled per schema.

aiokafka reads and writes every Kafka request and response through its generic ``Schema`` walk: a
class method call, a ``BytesIO`` read and a ``struct`` unpack per field, a generator per array. For
the edge worker's steady traffic (a fetch and a produce per unit, their responses, the transactions'
requests) that walk was ~7% of the worker's CPU at 1,000 req/s (``bench/profile``: encoding 3.2%,
decoding 4.1%). `install` replaces ``Struct.encode`` and ``Struct.decode`` with functions generated
once per struct class from its schema: runs of fixed-width fields read or written by one precompiled
``struct`` call, strings, bytes and arrays read from one buffer by offset, nothing else per field.

The bytes written and the values read are aiokafka's, field for field, for every struct class it
defines (``tests/pipeline/test_kafkawire.py`` checks each against aiokafka's own codec on generated
values and on truncated and corrupted input): a short or malformed buffer raises ``ValueError`` as
aiokafka's does. A class whose schema uses a type not compiled here, or which defines its own
``encode`` or ``decode``, keeps aiokafka's code. ``python -m bench.wire`` measures both codecs on the
worker's own requests and responses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any, Final

from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import (
    Array,
    Boolean,
    Bytes,
    CompactArray,
    CompactString,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    TaggedFields,
    UInt32,
)

Decoder = Callable[[Any, int], "tuple[tuple[Any, ...], int]"]
"""Reads a schema's values from a buffer (bytes or memoryview) at an offset: the values and the offset
after them."""
Encoder = Callable[[Any, "list[Any]"], None]
"""Appends the wire bytes of a schema's values (a sequence, in field order) to a list of parts."""

FIXED: Final[dict[type[Any], str]] = {
    Int8: "b",
    Int16: "h",
    Int32: "i",
    Int64: "q",
    UInt32: "I",
    Float64: "d",
    Boolean: "?",
}
"""aiokafka's fixed-width types and their ``struct`` codes (big-endian)."""

_ORIGINAL: Final = (Struct.__dict__["encode"], Struct.__dict__["decode"])
"""aiokafka's own ``Struct.encode`` and ``Struct.decode``, restored by `uninstall`."""
_codecs: dict[type[Struct], tuple[Any, Any] | None] = {}
"""Per struct class, its compiled (encode, decode) functions; None: the class keeps aiokafka's."""


class Unsupported(Exception):
    """A schema holds a type this module does not compile."""


def _uvarint(buf: Any, pos: int) -> tuple[int, int]:
    """aiokafka's ``UnsignedVarInt32.decode`` at ``pos``: the value and the offset after it."""
    b = buf[pos]
    pos += 1
    if not b & 0x80:
        return b, pos
    value, shift = 0, 0
    while True:
        if not b & 0x80:
            break
        value |= (b & 0x7F) << shift
        shift += 7
        if shift > 28:
            raise ValueError(f"Invalid value {value}")
        b = buf[pos]
        pos += 1
    return value | (b << shift), pos


def _uvarint_bytes(value: int) -> bytes:
    """aiokafka's ``UnsignedVarInt32.encode``."""
    value &= 0xFFFFFFFF
    out = bytearray()
    while value & 0xFFFFFF80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tagged(buf: Any, pos: int) -> tuple[dict[int, bytes], int]:
    """aiokafka's ``TaggedFields.decode`` at ``pos``."""
    count, pos = _uvarint(buf, pos)
    fields: dict[int, bytes] = {}
    previous = -1
    for _ in range(count):
        tag, pos = _uvarint(buf, pos)
        if tag <= previous:
            raise ValueError(f"Invalid or out-of-order tag {tag}")
        previous = tag
        size, pos = _uvarint(buf, pos)
        end = pos + size
        fields[tag] = bytes(buf[pos:end])  # a short read, as BytesIO.read gives
        pos = min(end, len(buf))
    return fields, pos


class _Compiler:
    """Generates the source of one struct's encoder and decoder, nested schemas as functions of their own."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_uvarint": _uvarint,
            "_uvarint_bytes": _uvarint_bytes,
            "_tagged": _tagged,
            "_tagged_encode": TaggedFields.encode,
            "_unpack_from": struct.unpack_from,
            "_pack": struct.pack,
            "_bytes": bytes,
            "_str": str,
            "_I16": struct.Struct(">h"),
            "_I32": struct.Struct(">i"),
        }
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _const(self, value: Any, prefix: str) -> str:
        name = self._name(prefix)
        self.names[name] = value
        return name

    @staticmethod
    def _runs(fields: tuple[Any, ...]) -> list[tuple[int, int]]:
        """Spans [start, end) of consecutive fixed-width fields."""
        runs, i = [], 0
        while i < len(fields):
            if isinstance(fields[i], type) and fields[i] in FIXED:
                j = i
                while j < len(fields) and isinstance(fields[j], type) and fields[j] in FIXED:
                    j += 1
                runs.append((i, j))
                i = j
            else:
                i += 1
        return runs

    # -- decoding ---------------------------------------------------------------------------------

    def decoder(self, schema: Schema) -> str:
        """Emit ``def dN(buf, pos)`` for ``schema``; returns its name."""
        fields = schema.fields
        name = self._name("d")
        body: list[str] = []
        runs = dict(self._runs(fields))
        i = 0
        while i < len(fields):
            if i in runs:
                end = runs[i]
                fmt = ">" + "".join(FIXED[f] for f in fields[i:end])
                s = self._const(struct.Struct(fmt), "s")
                targets = "".join(f"v{k}, " for k in range(i, end))
                body.append(f"{targets}= {s}.unpack_from(buf, pos)")
                body.append(f"pos += {struct.calcsize(fmt)}")
                i = end
                continue
            body.extend(self._decode_field(fields[i], f"v{i}"))
            i += 1
        values = "".join(f"v{k}, " for k in range(len(fields)))
        body.append(f"return ({values}), pos")
        self.lines.append(f"def {name}(buf, pos):")
        self.lines.extend("    " + line for line in body)
        return name

    def _decode_field(self, field: Any, target: str) -> list[str]:
        """Statements that read one field into ``target`` and advance ``pos``."""
        if isinstance(field, type) and field in FIXED:
            s = self._const(struct.Struct(">" + FIXED[field]), "s")
            return [f"{target}, = {s}.unpack_from(buf, pos)", f"pos += {struct.calcsize('>' + FIXED[field])}"]
        if field is TaggedFields:
            return [f"{target}, pos = _tagged(buf, pos)"]
        kind = type(field)
        if kind is String or kind is CompactString:
            encoding = self._const(field.encoding, "enc")
            length = (
                ["n, = _I16.unpack_from(buf, pos)", "pos += 2"]
                if kind is String
                else ["n, pos = _uvarint(buf, pos)", "n -= 1"]
            )
            return [
                *length,
                "if n < 0:",
                f"    {target} = None",
                "else:",
                "    end = pos + n",
                "    if end > len(buf):",
                "        raise ValueError('Buffer underrun decoding string')",
                f"    {target} = _str(buf[pos:end], {encoding})",
                "    pos = end",
            ]
        if kind is Array or kind is CompactArray:
            return self._decode_array(field, target, compact=kind is CompactArray)
        if kind is Schema:
            inner = self.decoder(field)
            return [f"{target}, pos = {inner}(buf, pos)"]
        if field is Bytes:
            return [
                "n, = _I32.unpack_from(buf, pos)",
                "pos += 4",
                "if n < 0:",
                f"    {target} = None",
                "else:",
                "    end = pos + n",
                "    if end > len(buf):",
                "        raise ValueError('Buffer underrun decoding Bytes')",
                f"    {target} = _bytes(buf[pos:end])",
                "    pos = end",
            ]
        raise Unsupported(repr(field))

    def _decode_array(self, field: Array, target: str, *, compact: bool) -> list[str]:
        if compact:
            length = ["n, pos = _uvarint(buf, pos)", "n -= 1"]
        else:
            length = ["n, = _I32.unpack_from(buf, pos)", "pos += 4"]
        of = field.array_of
        if isinstance(of, type) and of in FIXED:
            code = FIXED[of]
            size = struct.calcsize(">" + code)
            read = [
                f"    {target} = list(_unpack_from('>%d{code}' % n, buf, pos)) if n > 0 else []",
                f"    pos += {size} * max(n, 0)",
            ]
        else:
            element = self._name("x")  # a name of its own: an element may be an array too
            item = self._decode_field(of, element)
            # Each element's statements inline in the loop (``range(n)`` is read once); a schema
            # element is one call.
            read = [f"    {target} = []", "    for _ in range(n):"]
            read.extend("        " + line for line in item)
            read.append(f"        {target}.append({element})")
        return [*length, "if n == -1:", f"    {target} = None", "else:", *read]

    # -- encoding ---------------------------------------------------------------------------------

    def encoder(self, schema: Schema) -> str:
        """Emit ``def eN(item, out)`` for ``schema``; returns its name."""
        fields = schema.fields
        name = self._name("e")
        body = [
            f"if len(item) != {len(fields)}:",
            "    raise ValueError('Item field count does not match Schema')",
        ]
        if fields:
            body.append("".join(f"v{k}, " for k in range(len(fields))) + "= item")
        runs = dict(self._runs(fields))
        i = 0
        while i < len(fields):
            if i in runs:
                end = runs[i]
                s = self._const(struct.Struct(">" + "".join(FIXED[f] for f in fields[i:end])), "s")
                body.append(f"out.append({s}.pack({', '.join(f'v{k}' for k in range(i, end))}))")
                i = end
                continue
            body.extend(self._encode_field(fields[i], f"v{i}"))
            i += 1
        self.lines.append(f"def {name}(item, out):")
        self.lines.extend("    " + line for line in body)
        return name

    def _encode_field(self, field: Any, value: str) -> list[str]:
        """Statements that append one field's bytes for ``value``."""
        if isinstance(field, type) and field in FIXED:
            s = self._const(struct.Struct(">" + FIXED[field]), "s")
            return [f"out.append({s}.pack({value}))"]
        if field is TaggedFields:
            return [f"out.append(_tagged_encode({value}))"]
        kind = type(field)
        if kind is String or kind is CompactString:
            encoding = self._const(field.encoding, "enc")
            none, size = (
                ("b'\\xff\\xff'", "_I16.pack(len(raw))")
                if kind is String
                else ("b'\\x00'", "_uvarint_bytes(len(raw) + 1)")
            )
            return [
                f"if {value} is None:",
                f"    out.append({none})",
                "else:",
                f"    raw = _str({value}).encode({encoding})",
                f"    out.append({size})",
                "    out.append(raw)",
            ]
        if kind is Array or kind is CompactArray:
            return self._encode_array(field, value, compact=kind is CompactArray)
        if kind is Schema:
            inner = self.encoder(field)
            return [f"{inner}({value}, out)"]
        if field is Bytes:
            return [
                f"if {value} is None:",
                "    out.append(b'\\xff\\xff\\xff\\xff')",
                "else:",
                f"    out.append(_I32.pack(len({value})))",
                f"    out.append({value})",
            ]
        raise Unsupported(repr(field))

    def _encode_array(self, field: Array, value: str, *, compact: bool) -> list[str]:
        none, size = (
            ("b'\\x00'", f"_uvarint_bytes(len({value}) + 1)")
            if compact
            else ("b'\\xff\\xff\\xff\\xff'", f"_I32.pack(len({value}))")
        )
        of = field.array_of
        if isinstance(of, type) and of in FIXED:
            write = [f"    out.append(_pack('>%d{FIXED[of]}' % len({value}), *{value}))"]
        else:
            element = self._name("x")
            write = [f"    for {element} in {value}:"]
            write.extend("        " + line for line in self._encode_field(of, element))
        return [f"if {value} is None:", f"    out.append({none})", "else:", f"    out.append({size})", *write]


def compile_struct(cls: type[Struct]) -> tuple[Callable[[Struct], bytes], Callable[[Any], Struct]] | None:
    """The compiled ``encode`` (an instance's bytes) and ``decode`` (bytes or a ``BytesIO`` at its
    position, which it advances as aiokafka's does) of ``cls``; None when its schema holds a type
    not compiled here or the class codes itself."""
    if "encode" in vars(cls) or "decode" in vars(cls):
        return None
    schema = cls.SCHEMA
    compiler = _Compiler()
    try:
        decode_name = compiler.decoder(schema)
        encode_name = compiler.encoder(schema)
    except Unsupported:
        return None
    namespace = dict(compiler.names)
    exec("\n".join(compiler.lines), namespace)  # source generated above from the schema
    decode_values: Decoder = namespace[decode_name]
    encode_values: Encoder = namespace[encode_name]
    names = tuple(schema.names)
    plain = cls.__init__ is Struct.__init__  # built as Struct.__init__ builds it, without its loop
    new: Any = cls.__new__

    def encode(self: Struct) -> bytes:
        state = self.__dict__
        out: list[Any] = []
        try:
            encode_values([state[name] for name in names], out)
        except struct.error as err:
            raise ValueError(f"Error encountered when attempting to encode {cls.__name__}: {err}") from err
        return b"".join(out)

    fields = schema.fields
    fixed = (
        struct.Struct(">" + "".join(FIXED[f] for f in fields))
        if fields and all(isinstance(f, type) and f in FIXED for f in fields)
        else None
    )  # a response header: read its few bytes, no view of the whole response

    def decode(data: Any) -> Struct:
        if fixed is not None and isinstance(data, BytesIO):
            chunk = data.read(fixed.size)
            if len(chunk) < fixed.size:
                raise ValueError(f"Error encountered when attempting to decode {cls.__name__}: short read")
            values: tuple[Any, ...] = fixed.unpack(chunk)
        elif isinstance(data, BytesIO):
            view = data.getbuffer()
            try:
                values, end = decode_values(view, data.tell())
            except (struct.error, IndexError) as err:
                raise ValueError(
                    f"Error encountered when attempting to decode {cls.__name__}: {err}"
                ) from err
            finally:
                view.release()
            data.seek(end)
        elif isinstance(data, bytes):
            try:
                values, _ = decode_values(data, 0)
            except (struct.error, IndexError) as err:
                raise ValueError(
                    f"Error encountered when attempting to decode {cls.__name__}: {err}"
                ) from err
        else:  # another reader: aiokafka's own way
            original: Struct = _ORIGINAL[1].__func__(cls, data)
            return original
        if plain:
            made: Struct = new(cls)
            made.__dict__.update(zip(names, values, strict=True))
            return made
        return cls(*values)

    return encode, decode


def _codec(cls: type[Struct]) -> tuple[Any, Any] | None:
    try:
        return _codecs[cls]
    except KeyError:
        codec = _codecs[cls] = compile_struct(cls)
        return codec


def _encode(self: Struct) -> bytes:
    codec = _codec(type(self))
    if codec is None:
        encoded: bytes = _ORIGINAL[0](self)
        return encoded
    encoded = codec[0](self)
    return encoded


def _decode(cls: type[Struct], data: Any) -> Struct:
    codec = _codec(cls)
    if codec is None:
        decoded: Struct = _ORIGINAL[1].__func__(cls, data)
        return decoded
    decoded = codec[1](data)
    return decoded


def install() -> None:
    """Encode and decode aiokafka's structs with the compiled functions (process-wide). Idempotent."""
    Struct.encode = _encode
    Struct.decode = classmethod(_decode)


def uninstall() -> None:
    """aiokafka's own codec again (tests and ``bench.wire`` compare the two)."""
    Struct.encode, Struct.decode = _ORIGINAL


def installed() -> bool:
    """Whether `install` is in effect."""
    return Struct.__dict__["encode"] is _encode
