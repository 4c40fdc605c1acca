"""Deterministic table files through Beam FileSystems: the same rows always give the same bytes.

Parquet via pyarrow; Avro through avro_columns' column-wise encoder, framed by fastavro's Writer with a
sync marker derived from the file's identity (fastavro draws a random one by default).
"""
from __future__ import annotations

import hashlib
import io
import math
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from labelbeam.transforms.arrays import avro_columns
from labelbeam.transforms.storage.stores import environment_faults


class FileEntry(NamedTuple):
    path: str     # relative to the version directory
    rows: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


def shard_names(prefix: str, suffix: str, num_shards: int) -> list[str]:
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}{suffix}" for i in range(num_shards)]


def num_shards_for(rows: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(rows / rows_per_shard))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    # Page checksums (CRC32) let readers that verify them (page_checksum_verification=True) and
    # `labelbeam verify` catch a flipped byte inside a page, not only a changed file digest.
    pq.write_table(table, sink, compression="zstd", write_statistics=True, write_page_checksum=True)
    return sink.getvalue()


def avro_table_bytes(schema: dict, rows: pa.Table | pa.RecordBatch, name: str,
                     metadata: dict[str, str] | None = None) -> bytes:
    """An Avro file of the rows (avro_columns.CODEC, a sync marker from the file's identity; `metadata` adds user keys
    to its header): what fastavro.writer writes for rows.to_pylist(), map entries sorted by key."""
    return avro_columns.table_file_bytes(schema, rows, name, metadata)


def write_file(version_dir: str, relative_path: str, data: bytes, rows: int) -> FileEntry:
    path = FileSystems.join(version_dir, *relative_path.split("/"))
    faults = environment_faults()
    faults.before("write", path)
    with FileSystems.create(path) as out:
        out.write(data)
    faults.after("write", path)
    return FileEntry(relative_path, rows, len(data), hashlib.sha256(data).hexdigest())
