"""GroupBatchesOnDisk: GroupByKey for (int key, pa.RecordBatch) whose batches pass through local files.

The local runner (FnApiRunner) keeps every PCollection that crosses a GroupByKey in its own memory: it
holds the decoded values of the whole shuffle, then encodes them all into one bundle for the reading
stage. A build's peak RSS therefore grew with its input, about 1.1 GB per million events. Here the
writing stage appends each key's batches to Arrow IPC stream files in a directory and shuffles only the file
names; the reading stage opens one key's files at a time. The runner then holds file names, and a
worker holds one key's batches: peak memory follows the largest key, not the input.

Only for runners whose workers share the directory (the local ones). Managed runners have a real
shuffle service and use `beam.GroupByKey`. The directory belongs to the caller, who removes it after
the run: a file is read again if its reading bundle is retried, so it cannot be deleted as it is read.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from labelbeam.transforms import coders  # noqa: F401 - registers the Arrow coder


class WriteBatchFilesFn(beam.DoFn):
    """(key, RecordBatch) -> (key, path) once per key and schema at the end of each bundle."""

    def __init__(self, directory: str):
        self._directory = directory
        self._writers: dict[tuple[int, pa.Schema], tuple[str, pa.ipc.RecordBatchStreamWriter]] = {}

    def start_bundle(self):
        self._writers = {}

    def process(self, key_and_batch: tuple[int, pa.RecordBatch]):
        key, batch = key_and_batch
        writer_key = (key, batch.schema)
        if writer_key not in self._writers:
            path = os.path.join(self._directory, f"{key:05d}-{uuid.uuid4().hex}.arrow")
            # The stream format, not the file format: only it lets a dictionary column's dictionary change
            # from batch to batch (the source column is dictionary-encoded per input file).
            self._writers[writer_key] = path, pa.ipc.new_stream(path, batch.schema)
        self._writers[writer_key][1].write_batch(batch)

    def finish_bundle(self):
        writers, self._writers = self._writers, {}
        for (key, _), (path, writer) in writers.items():
            writer.close()
            # A bundle's files are named only once they are complete, so a reader never sees half a file.
            yield GlobalWindows.windowed_value((key, path))

    def teardown(self):
        for _, writer in self._writers.values():
            writer.close()


def read_batch_files(key: int, paths: Iterable[str]) -> tuple[int, list[pa.RecordBatch]]:
    """One key's batches, from its files in name order (the order of values in a group is not meaningful)."""
    batches: list[pa.RecordBatch] = []
    for path in sorted(paths):
        with pa.OSFile(path, "rb") as source:
            batches.extend(pa.ipc.open_stream(source))
    return key, batches


class GroupBatchesOnDisk(beam.PTransform):
    """PCollection[(int, pa.RecordBatch)] -> PCollection[(int, list[pa.RecordBatch])], as GroupByKey would
    group it, with the batches written to `directory` (which must exist) instead of the runner's buffers."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, keyed_batches):
        return (keyed_batches
                | "WriteBatchFiles" >> beam.ParDo(WriteBatchFilesFn(self._directory)).with_output_types(
                    tuple[int, str])
                | "GroupFileNames" >> beam.GroupByKey()
                | "ReadBatchFiles" >> beam.MapTuple(read_batch_files).with_output_types(
                    tuple[int, list[pa.RecordBatch]]))


def group_batches(directory: str | None, name: str) -> beam.PTransform:
    """GroupBatchesOnDisk in directory/name when a directory is given, else the runner's GroupByKey."""
    if directory is None:
        return beam.GroupByKey()
    path = os.path.join(directory, name)
    os.makedirs(path, exist_ok=True)
    return GroupBatchesOnDisk(path)
