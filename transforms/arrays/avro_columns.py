"""Arrow columns -> Avro binary datums, a column at a time, and Avro container files from them.

fastavro encodes a record at a time from Python dicts: on the ingest's hot path, turning Arrow rows
into dicts and encoding them cost ~11 us an event, more than parsing and validation together. Here each
field of a record schema is encoded for all rows at once with numpy (zig-zag varints, length-prefixed
strings, union branches, array and map blocks), and the rows' bytes are interleaved in one scatter.

The result is byte-for-byte what fastavro writes for the same rows (`arrow_schema`'s mapping, read in
reverse), with one choice made explicit: map entries are written sorted by key, so equal maps give
equal bytes whatever order their entries arrived in. `container_bytes` hands the encoded rows to
fastavro's own Writer in blocks cut where fastavro cuts them, so header, codec and sync markers are
fastavro's. tests/storage/test_avro_columns.py checks both against fastavro on generated rows.

Supported Avro types: null, boolean, int, long, float, double, bytes, string, fixed, enum (from Arrow
strings), array, map (string keys), record (from Arrow structs, or a table's columns), unions of "null"
and one other type, and logical types on int/long that travel as their integers (or as Arrow
timestamps/dates of the same unit). Anything else raises UnsupportedAvroType when the encoder is built.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastavro.write import Writer

CODEC = "deflate"   # of every Avro file labelbeam writes
# fastavro's Writer dumps a block once its encoded records reach this many bytes (1000 * SYNC_SIZE).
SYNC_INTERVAL = 16_000
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_NAMED = ("record", "enum", "fixed")


class UnsupportedAvroType(TypeError):
    """The schema holds a type this encoder does not write; fastavro's record path still can."""


class Pieces(NamedTuple):
    """One byte string per row: row r is data[sum(lengths[:r]) : sum(lengths[:r + 1])]."""
    lengths: np.ndarray       # int64 [rows]
    data: np.ndarray          # uint8, the rows' bytes back to back
    width: int | None = None  # set when every row has exactly this many bytes (a cheaper scatter)

    @property
    def offsets(self) -> np.ndarray:
        """int64 [rows + 1]: where each row starts in data, and the end."""
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)))

    def rows(self) -> list[bytes]:
        """Each row's bytes."""
        data, offsets = self.data.tobytes(), self.offsets.tolist()
        return [data[start:end] for start, end in zip(offsets[:-1], offsets[1:])]


def _empty_pieces(rows: int) -> Pieces:
    return Pieces(np.zeros(rows, dtype=np.int64), np.zeros(0, dtype=np.uint8), 0)


def interleave(parts: list[Pieces]) -> Pieces:
    """Row r of the result is row r of every part, in order (e.g. a record's fields).

    Encoders return their parts unjoined, so each byte is moved once, by the outermost join."""
    if len(parts) == 1:
        return parts[0]
    lengths = np.sum([part.lengths for part in parts], axis=0, dtype=np.int64)
    result = Pieces(lengths, np.empty(int(lengths.sum()), dtype=np.uint8))
    start = result.offsets[:-1]   # where the next part's bytes go in each row
    for part in parts:
        if part.width == 1:
            result.data[start] = part.data
        elif part.width is not None:
            if part.width:
                result.data[(start[:, None] + np.arange(part.width)).reshape(-1)] = part.data
        elif len(part.data):
            shift = start - part.offsets[:-1]   # destination minus source, for every byte of a row
            result.data[np.repeat(shift, part.lengths) + np.arange(len(part.data))] = part.data
        else:
            continue   # every row empty
        start = start + part.lengths
    return result


def expand(pieces: Pieces, present: np.ndarray) -> Pieces:
    """Pieces of the rows where `present` is true, placed among len(present) rows (empty elsewhere)."""
    if present.all():
        return pieces
    lengths = np.zeros(len(present), dtype=np.int64)
    lengths[present] = pieces.lengths
    return Pieces(lengths, pieces.data)


def group(items: Pieces, counts: np.ndarray) -> Pieces:
    """Consecutive runs of items (counts[r] of them for row r) as one piece per row."""
    item_offsets = items.offsets
    bounds = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
    return Pieces(item_offsets[bounds[1:]] - item_offsets[bounds[:-1]], items.data)


def zigzag_varints(values: np.ndarray) -> Pieces:
    """Avro int/long encoding of integers: zig-zag, then little-endian base-128 groups."""
    signed = np.asarray(values, dtype=np.int64)
    unsigned = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    return varints(unsigned)


def varints(unsigned: np.ndarray) -> Pieces:
    n = len(unsigned)
    if n == 0:
        return _empty_pieces(0)
    widths = np.ones(n, dtype=np.int64)
    rest = unsigned >> np.uint64(7)
    while rest.any():
        widths += rest != 0
        rest >>= np.uint64(7)
    width = int(widths.max())
    if width == 1:
        return Pieces(widths, unsigned.astype(np.uint8), 1)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((unsigned[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    position = np.arange(width)
    groups |= np.where(position < (widths[:, None] - 1), np.uint8(0x80), np.uint8(0))
    same_width = int(widths.min()) == width
    return Pieces(widths, groups.reshape(-1) if same_width else groups[position < widths[:, None]],
                  width if same_width else None)


def _fixed_width(values: np.ndarray) -> Pieces:
    values = np.ascontiguousarray(values)
    return Pieces(np.full(len(values), values.dtype.itemsize, dtype=np.int64), values.view(np.uint8).reshape(-1),
                  values.dtype.itemsize)


def _constant_byte(rows: int, value: int) -> Pieces:
    return Pieces(np.ones(rows, dtype=np.int64), np.full(rows, value, dtype=np.uint8), 1)


def _binary_parts(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, bytes back to back) of a string/binary array without nulls."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.view(pa.binary() if pa.types.is_string(array.type) else pa.large_binary())
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        array = array.cast(pa.large_binary())
    offsets_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offsets_type)[array.offset: array.offset + len(array) + 1] \
        if len(array) else np.zeros(1, dtype=np.int64)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]: offsets[-1]] if data_buffer is not None \
        else np.zeros(0, dtype=np.uint8)
    return np.diff(offsets), data


def _length_prefixed(array: pa.Array) -> list[Pieces]:
    lengths, data = _binary_parts(array)
    return [zigzag_varints(lengths), Pieces(lengths, data)]


# Arrow temporal types whose integers are what the Avro logical type counts (anything else is refused,
# rather than written in the wrong unit).
_TEMPORAL = {"timestamp-millis": pa.timestamp("ms"), "timestamp-micros": pa.timestamp("us"), "date": pa.date32(),
             "time-millis": pa.time32("ms"), "time-micros": pa.time64("us")}


def _integers(array: pa.Array, logical_type: str | None = None) -> np.ndarray:
    if pa.types.is_temporal(array.type):
        expected = _TEMPORAL.get(logical_type)
        if expected is None or array.type.id != expected.id or getattr(array.type, "unit", None) != \
                getattr(expected, "unit", None):
            raise TypeError(f"Arrow {array.type} does not hold the integers of Avro {logical_type or 'int/long'}")
        array = array.view(pa.int64() if array.type.bit_width == 64 else pa.int32())
    if not pa.types.is_integer(array.type):
        raise TypeError(f"an Avro int or long needs integers, got Arrow {array.type}")
    return array.to_numpy(zero_copy_only=False)


Encoder = Callable[[pa.Array], list[Pieces]]   # a value's encoding as parts, joined by the caller


def _no_nulls(encode: Encoder, avro_type: Any) -> Encoder:
    def checked(array: pa.Array) -> list[Pieces]:
        if getattr(array, "null_count", 0):   # a RecordBatch (the top-level record) has none
            raise ValueError(f"{array.null_count} null values for the non-null Avro type {avro_type!r}")
        return encode(array)
    return checked


class _Compiler:
    """Builds one Encoder per Avro type, resolving named types as the schema defines them."""

    def __init__(self) -> None:
        self._named: dict[str, Any] = {}

    def encoder(self, avro_type: Any, namespace: str = "") -> Encoder:
        if isinstance(avro_type, list):
            return self._union(avro_type, namespace)
        if isinstance(avro_type, str):
            if avro_type == "null":
                return lambda array: []   # nothing is written
            if avro_type in _PRIMITIVES:
                return _no_nulls(self._primitive(avro_type), avro_type)
            name = avro_type if "." in avro_type or not namespace else f"{namespace}.{avro_type}"
            for candidate in (name, avro_type):
                if candidate in self._named:
                    return self._named[candidate]
            raise UnsupportedAvroType(f"unknown named type {avro_type!r}")
        kind = avro_type["type"]
        if kind in _NAMED:
            return self._define(avro_type, namespace)
        if kind == "array":
            return _no_nulls(self._array(self.encoder(avro_type["items"], namespace)), avro_type)
        if kind == "map":
            return _no_nulls(self._map(self.encoder(avro_type["values"], namespace)), avro_type)
        if kind in _PRIMITIVES:
            logical_type = avro_type.get("logicalType")
            if logical_type and kind in ("int", "long"):
                return _no_nulls(lambda array: [zigzag_varints(_integers(array, logical_type))], avro_type)
            if logical_type and logical_type != "uuid":
                raise UnsupportedAvroType(f"logical type {logical_type!r} on {kind}")
            return self.encoder(kind, namespace)
        raise UnsupportedAvroType(f"Avro type {avro_type!r}")

    def _define(self, avro_type: dict, namespace: str) -> Encoder:
        name = avro_type["name"]
        namespace = avro_type.get("namespace", name.rpartition(".")[0] if "." in name else namespace)
        full_name = name if "." in name or not namespace else f"{namespace}.{name}"
        kind = avro_type["type"]
        if kind == "enum":
            encoder = _no_nulls(self._enum(avro_type["symbols"]), avro_type)
        elif kind == "fixed":
            encoder = _no_nulls(self._fixed(avro_type["size"]), avro_type)
        else:
            fields: list[tuple[str, Encoder]] = []
            encoder = _no_nulls(self._struct(fields), avro_type)
            self._named[full_name] = self._named[name.rpartition(".")[2]] = encoder   # may recurse
            fields.extend((field["name"], self.encoder(field["type"], namespace)) for field in avro_type["fields"])
        self._named[full_name] = self._named[name.rpartition(".")[2]] = encoder
        return encoder

    @staticmethod
    def _primitive(kind: str) -> Encoder:
        if kind == "boolean":
            return lambda array: [_fixed_width(array.to_numpy(zero_copy_only=False).astype(np.uint8))]
        if kind in ("int", "long"):
            return lambda array: [zigzag_varints(_integers(array))]
        if kind == "float":
            return lambda array: [_fixed_width(array.to_numpy(zero_copy_only=False).astype("<f4"))]
        if kind == "double":
            return lambda array: [_fixed_width(array.to_numpy(zero_copy_only=False).astype("<f8"))]
        return _length_prefixed   # bytes, string

    def _union(self, branches: list, namespace: str) -> Encoder:
        others = [i for i, branch in enumerate(branches) if branch != "null"]
        if len(others) != 1 or len(branches) > 2:
            raise UnsupportedAvroType(f"only unions of \"null\" and one type are written, got {branches}")
        value_index = others[0]
        encode_value = self.encoder(branches[value_index], namespace)
        if len(branches) == 1:
            return lambda array: [_constant_byte(len(array), 0), *encode_value(array)]
        null_byte, value_byte = (2 * (1 - value_index), 2 * value_index)   # zig-zag of the branch index

        def union(array: pa.Array) -> list[Pieces]:
            if not array.null_count:
                return [_constant_byte(len(array), value_byte), *encode_value(array)]
            present = array.is_valid().to_numpy(zero_copy_only=False)
            branch = np.where(present, np.uint8(value_byte), np.uint8(null_byte))
            values = encode_value(array.filter(pa.array(present)))
            return [_fixed_width(branch), *(expand(part, present) for part in values)]
        return union

    @staticmethod
    def _enum(symbols: list[str]) -> Encoder:
        symbol_array = pa.array(symbols, pa.string())

        def enum(array: pa.Array) -> list[Pieces]:
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            index = pc.index_in(array.cast(pa.string()), value_set=symbol_array)
            if index.null_count:
                unknown = array.filter(index.is_null()).unique().to_pylist()
                raise ValueError(f"values {unknown[:5]} are not symbols of the enum {symbols}")
            return [zigzag_varints(index.to_numpy(zero_copy_only=False))]
        return enum

    @staticmethod
    def _fixed(size: int) -> Encoder:
        def fixed(array: pa.Array) -> list[Pieces]:
            lengths, data = _binary_parts(array)
            if (lengths != size).any():
                raise ValueError(f"a fixed({size}) value has {int(lengths[lengths != size][0])} bytes")
            return [Pieces(lengths, data, size)]
        return fixed

    @staticmethod
    def _struct(fields: list[tuple[str, Encoder]]) -> Encoder:
        def struct(array: pa.Array | pa.RecordBatch) -> list[Pieces]:
            if isinstance(array, pa.RecordBatch):
                columns = [array.column(name) for name, _ in fields]
            elif pa.types.is_struct(array.type):
                columns = [array.field(name) for name, _ in fields]
            else:
                raise TypeError(f"an Avro record needs an Arrow struct, got {array.type}")
            return [part for (_, encode), column in zip(fields, columns) for part in encode(column)]
        return struct

    @staticmethod
    def _array(encode_item: Encoder) -> Encoder:
        def array_(array: pa.Array) -> list[Pieces]:
            counts = array.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
            return _blocks(encode_item(array.flatten()), counts)
        return array_

    @staticmethod
    def _map(encode_value: Encoder) -> Encoder:
        def map_(array: pa.Array) -> list[Pieces]:
            offsets = array.offsets.to_numpy().astype(np.int64)
            first, last = int(offsets[0]), int(offsets[-1])
            keys = array.keys.slice(first, last - first)
            values = array.items.slice(first, last - first)
            counts = np.diff(offsets)
            rows = np.repeat(np.arange(len(array), dtype=np.int64), counts)
            order, keep = _sorted_entries(rows, keys, values)
            keys, values = keys.take(order).filter(keep), values.take(order).filter(keep)
            counts = np.bincount(rows[order.to_numpy()][keep.to_numpy(zero_copy_only=False)],
                                 minlength=len(array)).astype(np.int64)
            return _blocks([*_length_prefixed(keys), *encode_value(values)], counts)
        return map_


def _sorted_entries(rows: np.ndarray, keys: pa.Array, values: pa.Array) -> tuple[pa.Array, pa.BooleanArray]:
    """(order, keep): map entries sorted by (row, key, value), and which to keep: the last of equal keys,
    as dict(sorted(entries)) keeps it."""
    columns = {"row": pa.array(rows), "key": keys}
    sortable_values = pa.types.is_primitive(values.type) or pa.types.is_string(values.type) \
        or pa.types.is_binary(values.type)
    if sortable_values:
        columns["value"] = values
    order = pc.sort_indices(pa.table(columns), sort_keys=[(name, "ascending") for name in columns])
    sorted_rows, sorted_keys = rows[order.to_numpy()], keys.take(order)
    if len(sorted_rows) < 2:
        return order, pa.array(np.ones(len(sorted_rows), dtype=bool))
    same_as_next = (sorted_rows[:-1] == sorted_rows[1:]) & pc.equal(
        sorted_keys.slice(0, len(sorted_keys) - 1), sorted_keys.slice(1)).to_numpy(zero_copy_only=False)
    return order, pa.array(np.append(~same_as_next, True))


def _blocks(item_parts: list[Pieces], counts: np.ndarray) -> list[Pieces]:
    """Array/map encoding: a block count before a row's items when it has any, then a 0 that ends it."""
    nonempty = counts > 0
    items = interleave(item_parts) if item_parts else _empty_pieces(int(counts.sum()))
    return [expand(zigzag_varints(counts[nonempty]), nonempty), group(items, counts), _constant_byte(len(counts), 0)]


class RowEncoder:
    """encode(rows) -> Pieces: each row's Avro binary datum under `schema` (a record schema, as JSON).

    `rows` is a pa.Table or pa.RecordBatch holding a column per field of the record (others are ignored).
    """

    def __init__(self, schema: dict):
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise UnsupportedAvroType("the top-level schema must be a record")
        self._encode = _Compiler().encoder(schema)

    def encode(self, rows: pa.Table | pa.RecordBatch) -> Pieces:
        if isinstance(rows, pa.Table):
            rows = rows.combine_chunks().to_batches()[0] if rows.num_rows else \
                pa.RecordBatch.from_pylist([], schema=rows.schema)
        parts = self._encode(rows)
        return interleave(parts) if parts else _empty_pieces(rows.num_rows)


def encode_rows(schema: dict, rows: pa.Table | pa.RecordBatch) -> Pieces:
    return RowEncoder(schema).encode(rows)


class _Block(NamedTuple):
    """What fastavro's Writer.write_block reads of a block: its record count and its encoded bytes."""
    num_records: int
    bytes_: io.BytesIO


def block_bounds(lengths: np.ndarray, sync_interval: int = SYNC_INTERVAL) -> list[tuple[int, int]]:
    """[start, end) of each block as fastavro's Writer cuts it: records are added until the block holds
    sync_interval bytes or more."""
    ends = np.cumsum(lengths, dtype=np.int64)
    bounds, start, before = [], 0, 0
    while start < len(lengths):
        end = int(np.searchsorted(ends, before + sync_interval, side="left")) + 1
        end = min(max(end, start + 1), len(lengths))
        bounds.append((start, end))
        start, before = end, int(ends[end - 1])
    return bounds


def container_bytes(schema: dict, rows: Pieces, codec: str = "null", sync_marker: bytes = b"",
                    metadata: dict[str, str] | None = None) -> bytes:
    """An Avro object container file of the encoded rows: what fastavro.writer writes for the same
    records, with the same codec, sync marker and metadata."""
    sink = io.BytesIO()
    writer = Writer(sink, schema, codec=codec, sync_marker=sync_marker,
                                   metadata=metadata)
    offsets = rows.offsets
    data = rows.data
    for start, end in block_bounds(rows.lengths):
        writer.write_block(_Block(end - start, io.BytesIO(data[offsets[start]: offsets[end]].tobytes())))
    writer.flush()
    return sink.getvalue()


def sync_marker(name: str, rows: int) -> bytes:
    """A file's sync marker, derived from its identity: fastavro draws a random one by default, and
    the same rows must always give the same bytes."""
    return hashlib.sha256(f"{name}:{rows}".encode()).digest()[:16]


def table_file_bytes(schema: dict, rows: pa.Table | pa.RecordBatch, name: str,
                     metadata: dict[str, str] | None = None) -> bytes:
    """The Avro file (CODEC, sync_marker(name, rows)) of the rows: what fastavro.writer writes for
    rows.to_pylist() with map entries sorted by key."""
    return container_bytes(schema, encode_rows(schema, rows), CODEC, sync_marker(name, rows.num_rows), metadata)
