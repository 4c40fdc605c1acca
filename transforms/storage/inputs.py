"""Finds event files (local or any Beam FileSystem, e.g. gs://), checks they are whole, and describes them
for the manifest.

A truncated or corrupt input is never read in part. `match_inputs` reads every byte to hash it, and in
the same pass decompresses compressed files to their end and walks the framing of Avro files (blocks and
sync markers), so most damage is a CorruptInputError before the pipeline starts. Damage inside an Avro
block is found only by decoding it: the reader (event_files.py) raises CorruptInputError then.
"""
from __future__ import annotations

import bz2
import dataclasses
import datetime as dt
import hashlib
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterator

import zstandard  # a Beam dependency, used as Beam's own reader uses it
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from labelbeam.transforms.storage.stores import GCS_SCHEME, store_for

AVRO_MAGIC = b"Obj\x01"
AVRO_SYNC_SIZE = 16  # bytes of an Avro container file's sync marker
READ_BYTES = 1 << 20


EVENT_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".avro", ".jsonl.gz", ".json.gz", ".ndjson.gz")


class InputError(ValueError):
    """An --input that names nothing readable."""


class CorruptInputError(InputError):
    """An input file that is truncated or corrupt: the build stops rather than read part of it.

    `path` names the file; `detail` says what is wrong and where (for Avro, the record index).
    """

    def __init__(self, path: str, detail: str):
        super().__init__(f"input {path} is truncated or corrupt: {detail}")
        self.path = path
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.path, self.detail)


# How the error reads once a runner has turned it into text (a remote worker's traceback).
_CORRUPT_INPUT_TEXT = re.compile(r"CorruptInputError: input (.+?) is truncated or corrupt: (.*?)"
                                 r"(?: \[while running '[^']*'\])*$", re.MULTILINE)


def corrupt_input_in(err: BaseException) -> CorruptInputError | None:
    """The CorruptInputError behind an exception a pipeline run raised, or None.

    Beam re-raises a DoFn's exception as another object (the FnApiRunner as a RuntimeError whose
    context is the original; remote runners as text): this looks through the chain of causes and
    contexts, then for the error's text in the messages.
    """
    chain = list(_causes(err))
    for cause in chain:
        if isinstance(cause, CorruptInputError):
            return cause
    for cause in chain:
        match = _CORRUPT_INPUT_TEXT.search(str(cause))
        if match:
            return CorruptInputError(match.group(1), match.group(2))
    return None


def _causes(err: BaseException | None) -> Iterator[BaseException]:
    """err, then what it was raised from or while handling, and so on."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file and its fingerprint: what a rebuild or an up-to-date check compares.

    Local files are fingerprinted by their sha256 (read once, with the integrity checks). Objects in a
    store that keeps digests and generations (gs://) are fingerprinted from that metadata instead, so
    the launcher never downloads them before the job starts; their damage is found while reading.
    """
    path: str
    size_bytes: int
    raw_format: str                 # "json" | "avro"
    sha256: str | None = None       # local files
    object_fingerprint: tuple[tuple[str, str | int], ...] = ()  # gs://: generation, crc32c, md5

    def manifest_entry(self) -> dict:
        entry = {"path": self.path, "bytes": self.size_bytes, "format": self.raw_format}
        if self.sha256 is not None:
            return {**entry, "sha256": self.sha256}
        return {**entry, "fingerprint": "object-metadata", **dict(self.object_fingerprint)}


def _is_dir(pattern: str) -> bool:
    if "://" in pattern:
        return pattern.endswith("/")
    return os.path.isdir(pattern)


# A hive-style partition of event time, as the ingest log writes them: .../dt=YYYY-MM-DD[/hr=HH]/...
_PARTITION = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})(?:/hr=(\d{2}))?/")


def partition_start_ms(path: str) -> int | None:
    """The start (ms since the epoch, UTC) of the event-time partition a path lies in, if it names one."""
    match = _PARTITION.search(path.replace("\\", "/"))
    if match is None:
        return None
    day, hour = match.groups()
    try:
        start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(hours=int(hour or 0))
    except ValueError:
        return None
    return int(start.timestamp() * 1000)


def match_inputs(patterns: list[str], before_ms: int | None = None) -> list[InputFile]:
    """Every event file named by the patterns (a file, a glob, or a directory searched recursively).

    Sorted by path and de-duplicated. With `before_ms` (an as-of snapshot), files in an event-time
    partition (dt=YYYY-MM-DD/hr=HH, as the ingest log writes) that starts at or after it are left out:
    every event there is after the snapshot, and later partitions arriving leave the inputs unchanged.
    Raises InputError for a pattern that matches no file, and CorruptInputError (an InputError) for a
    file that is truncated or corrupt.
    """
    paths: dict[str, int] = {}
    later = 0
    for pattern in map(_canonical, patterns):
        if _is_dir(pattern):
            glob = FileSystems.join(pattern, "**")
            found = [m for m in _match(glob) if m.path.endswith(EVENT_FILE_SUFFIXES)]
            if not found:
                raise InputError(f"directory {pattern} holds no event files ({', '.join(EVENT_FILE_SUFFIXES)})")
        else:
            found = _match(pattern)
            if not found:
                raise InputError(f"no file matches {pattern}")
        for metadata in found:
            path = _canonical(metadata.path)
            start = partition_start_ms(path) if before_ms is not None else None
            if start is not None and start >= before_ms:
                later += 1
                continue
            paths[path] = metadata.size_in_bytes
    if not paths:
        raise InputError(f"all {later} event files lie in partitions after the --as-of time")
    return [_describe_object(path, size) if path.startswith(GCS_SCHEME) else _describe(path, size)
            for path, size in sorted(paths.items())]


def _describe_object(path: str, size_bytes: int) -> InputFile:
    """Size, format (from the first bytes) and the store's own fingerprint of a gs:// object."""
    info = store_for(path).stat(path)
    if info is None:
        raise InputError(f"{path} vanished while the inputs were listed")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        magic = stream.read(len(AVRO_MAGIC))
    raw_format = "avro" if magic == AVRO_MAGIC else "json"
    fingerprint = (("generation", info.generation), ("crc32c", info.crc32c), ("md5", info.md5))
    return InputFile(path, info.size, raw_format,
                     object_fingerprint=tuple((key, value) for key, value in fingerprint if value is not None))


def _canonical(path: str) -> str:
    """One spelling per file or pattern: ./a.jsonl, a.jsonl and /abs/a.jsonl must not be read three times."""
    return path if "://" in path else os.path.abspath(path)


def _match(pattern: str):
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError for missing paths and bad schemes alike.
        if "No files found" in str(err) or "not found" in str(err).lower():
            return []
        raise InputError(f"cannot list {pattern}: {err}") from err


class _HashingReader:
    """Reads a stream, hashing every byte read and counting them."""

    def __init__(self, stream):
        self._stream = stream
        self.digest = hashlib.sha256()
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.position += len(data)
        return data

    def drain(self) -> None:
        while self.read(READ_BYTES):
            pass


def _describe(path: str, size_bytes: int) -> InputFile:
    """Size, format and sha256 of one file, read once; CorruptInputError if it is truncated or corrupt."""
    compression = CompressionTypes.detect_compression_type(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        hashed = _HashingReader(stream)
        magic = hashed.read(len(AVRO_MAGIC))
        raw_format = "avro" if magic == AVRO_MAGIC else "json"
        if compression != CompressionTypes.UNCOMPRESSED:
            for _ in iter_decompressed(_prefixed(magic, hashed.read), compression, path):
                pass
        elif raw_format == "avro":
            check_avro_framing(hashed.read, path, size_bytes)
        hashed.drain()
    return InputFile(path, size_bytes, raw_format, hashed.digest.hexdigest())


def _prefixed(prefix: bytes, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A read function that returns `prefix` first, then what `read` returns."""
    pending = [prefix] if prefix else []

    def prefixed_read(size: int) -> bytes:
        return pending.pop() if pending else read(size)
    return prefixed_read


# --- compressed files -------------------------------------------------------------------------------

def _new_decompressor(compression: str) -> Callable[[], object]:
    if compression == CompressionTypes.GZIP:
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if compression == CompressionTypes.DEFLATE:
        return zlib.decompressobj
    if compression == CompressionTypes.BZIP2:
        return bz2.BZ2Decompressor
    if compression == CompressionTypes.LZMA:
        return lzma.LZMADecompressor
    if compression == CompressionTypes.ZSTD:
        # Beam's window limit: zstd frames written with a larger window need it to decode.
        return lambda: zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()
    raise ValueError(f"no decompressor for compression type {compression!r}")


def _decompression_errors(compression: str) -> tuple[type[BaseException], ...]:
    """What the decompressors raise for data that is not what they decompress."""
    if compression == CompressionTypes.ZSTD:
        return (zstandard.ZstdError,)
    # bz2 raises a bare OSError ("Invalid data stream"); only decompress() calls are guarded by it.
    return (zlib.error, lzma.LZMAError, OSError, EOFError)


def iter_decompressed(read: Callable[[int], bytes], compression: str, path: str) -> Iterator[bytes]:
    """The decompressed contents of a compressed stream, piece by piece, read to its very end.

    Concatenated members (gzip, bzip2, xz, zstd frames) follow one another, as Beam reads them.
    Raises CorruptInputError naming `path` if the data does not decompress (bad header, corrupt data,
    bad checksum) or ends before the end-of-stream marker of its last member (a truncated file).
    A file cut exactly between two members cannot be told from a whole one.
    """
    new_decompressor, errors = _new_decompressor(compression), _decompression_errors(compression)
    decompressor, inside_member = new_decompressor(), False
    while True:
        data = read(READ_BYTES)
        if not data:
            break
        while data:
            try:
                piece = decompressor.decompress(data)
            except errors as err:
                raise CorruptInputError(path, f"its {compression} data does not decompress ({err})") from None
            inside_member = True
            if piece:
                yield piece
            if decompressor.eof:  # the member ended; what follows it starts the next one
                data, decompressor, inside_member = decompressor.unused_data, new_decompressor(), False
            else:
                data = b""
    if inside_member:
        raise CorruptInputError(path, f"its {compression} data ends before the end-of-stream marker")


# --- Avro container files ---------------------------------------------------------------------------

class _AvroFraming:
    """Walks an Avro object container file's structure (Avro spec, "Object Container Files"):
    header metadata and sync marker, then per block a record count, a byte size, the bytes and the
    sync marker again. Block contents are skipped, not decoded."""

    def __init__(self, read: Callable[[int], bytes], path: str, size_bytes: int, position: int):
        self._read, self._path, self._size_bytes, self._position = read, path, size_bytes, position

    def _fail(self, detail: str) -> CorruptInputError:
        return CorruptInputError(self._path, f"Avro {detail} (at byte {self._position})")

    def _byte(self) -> int | None:
        data = self._read(1)
        if not data:
            return None
        self._position += 1
        return data[0]

    def _long(self, where: str, first: int | None = None) -> int:
        """A zig-zag varint long; `first` is its first byte if already read."""
        byte = self._byte() if first is None else first
        value = shift = 0
        while True:
            if byte is None:
                raise self._fail(f"file ends inside {where}")
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return (value >> 1) ^ -(value & 1)
            shift += 7
            if shift > 63:
                raise self._fail(f"{where} is not a valid long")
            byte = self._byte()

    def _bytes(self, size: int, where: str, keep: bool = False) -> bytes:
        """Reads `size` bytes; returns them if `keep` (small values only), else b""."""
        if size < 0:
            raise self._fail(f"{where} has a negative size {size}")
        if self._position + size > self._size_bytes:
            raise self._fail(f"file ends inside {where}")
        kept, left = [], size
        while left:
            piece = self._read(min(left, READ_BYTES))
            if not piece:
                raise self._fail(f"file ends inside {where}")
            self._position += len(piece)
            left -= len(piece)
            if keep:
                kept.append(piece)
        return b"".join(kept)

    def check(self) -> None:
        while True:  # header metadata: a map of string -> bytes, in blocks ending with a zero count
            count = self._long("the header")
            if count == 0:
                break
            if count < 0:
                count = -count
                self._long("the header")  # the block's byte size
            for _ in range(count):
                self._bytes(self._long("the header"), "the header")  # key
                self._bytes(self._long("the header"), "the header")  # value
        sync_marker = self._bytes(AVRO_SYNC_SIZE, "the header's sync marker", keep=True)
        block = 0
        while True:
            first = self._byte()
            if first is None:
                return
            count = self._long(f"block {block}'s record count", first)
            size = self._long(f"block {block}'s byte size")
            if count < 0:
                raise self._fail(f"block {block} has a negative record count {count}")
            self._bytes(size, f"block {block}")
            if self._bytes(AVRO_SYNC_SIZE, f"block {block}'s sync marker", keep=True) != sync_marker:
                raise self._fail(f"block {block} does not end with the file's sync marker")
            block += 1


def check_avro_framing(read: Callable[[int], bytes], path: str, size_bytes: int) -> None:
    """Raises CorruptInputError if an Avro container file is truncated or a sync marker is wrong.

    `read` continues right after the 4-byte magic. Only framing is checked: damage inside a block
    (found when it is decoded) and a file cut exactly after a block's sync marker pass.
    """
    _AvroFraming(read, path, size_bytes, len(AVRO_MAGIC)).check()
