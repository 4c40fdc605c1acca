"""ReadEvents: input files -> RawChunks, spread over workers by byte range."""
from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from labelbeam.transforms import stage_metrics
from labelbeam.transforms.coders import PickledCoder
from labelbeam.transforms.events import progress
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.storage.event_files import (
    DEFAULT_CHUNK_EVENTS,
    DEFAULT_RANGE_BYTES,
    ByteRange,
    plan_ranges,
    read_avro_records,
    read_json_lines,
)
from labelbeam.transforms.storage.inputs import InputFile


class RawChunkCoder(PickledCoder):
    """Estimates a chunk's size from its payload bytes (or record count for Avro), not by encoding it."""

    def estimate_size(self, value: RawChunk) -> int:
        return sum(map(len, value.payloads)) if value.raw_format == "json" else 200 * len(value.offsets)


@beam.typehints.with_output_types(RawChunk)
class ReadRangeFn(beam.DoFn):
    def __init__(self, chunk_events: int, progress_run: str | None = None):
        super().__init__()
        self._chunk_events = chunk_events
        self._progress_run = progress_run  # events/progress.py: a local launcher's progress bar

    def process(self, byte_range: ByteRange) -> Iterator[RawChunk]:
        read = read_avro_records if byte_range.raw_format == "avro" else read_json_lines
        events = 0
        for chunk in read(byte_range, self._chunk_events):
            progress.add(self._progress_run, events=len(chunk))
            stage_metrics.observe("read", "chunk_events", len(chunk))
            events += len(chunk)
            yield chunk
        progress.add(self._progress_run, parts=1)
        stage_metrics.count("read", {"ranges": 1, "events": events})


class ReadEvents(beam.PTransform):
    """Input files -> RawChunks of at most `chunk_events` events each, spread over workers."""

    def __init__(self, files: list[InputFile], range_bytes: int = DEFAULT_RANGE_BYTES,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS, progress_run: str | None = None):
        super().__init__()
        if not files:
            raise ValueError("ReadEvents needs at least one input file")
        if range_bytes < 1 or chunk_events < 1:
            raise ValueError(f"range_bytes and chunk_events must be positive, got {range_bytes} and {chunk_events}")
        self._ranges = plan_ranges(files, range_bytes)
        self._chunk_events = chunk_events
        self._progress_run = progress_run

    @property
    def parts(self) -> int:
        return len(self._ranges)

    def expand(self, pbegin):
        # Create reshuffles its elements (reshuffle=True), so the ranges already spread over workers.
        return (pbegin
                | "PlanRanges" >> beam.Create(self._ranges, reshuffle=True)
                | "ReadRanges" >> beam.ParDo(ReadRangeFn(self._chunk_events, self._progress_run)))


beam.coders.registry.register_coder(RawChunk, RawChunkCoder)
