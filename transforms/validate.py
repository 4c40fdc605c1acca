"""Parse + validate raw events: RawChunks -> {VALID: RecordBatch, DEAD_LETTER: RecordBatch, COUNTS}.

Every raw event ends up in exactly one of VALID or DEAD_LETTER; COUNTS carries how many were read,
so conservation is checked against an independent count. COUNTS also carries
UNKNOWN_FIELDS_DROPPED: valid events that had fields no event schema defines (ignored, as Avro
resolution ignores them). It is a detail of `valid`, outside the conservation identities, and is
emitted only when not zero.
"""
from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue

from labelbeam.transforms import (
    coders,  # noqa: F401 - registers the Arrow coder
    stage_metrics,
)
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.gc_pause import gc_paused
from labelbeam.transforms.events.parser import EventParser, ValidationRules
from labelbeam.transforms.events.raw_chunks import RawChunk

UNKNOWN_FIELDS_DROPPED = "unknown_fields_dropped"
AFTER_AS_OF_COUNT = "after_as_of"


# The rules themselves, or (for an always-on stream) a function giving today's rules when a chunk is parsed.
RulesSource = ValidationRules | Callable[[], ValidationRules]


class ParseEventsFn(beam.DoFn):
    def __init__(self, rules: RulesSource):
        super().__init__()
        self._rules = rules

    def _current_parser(self) -> EventParser:
        rules = self._rules() if callable(self._rules) else self._rules
        if self._parser is None or self._parser.rules != rules:
            self._parser = EventParser(rules)
        return self._parser

    def setup(self):
        self._parser = None

    def process(self, chunk: RawChunk):
        with gc_paused():
            columns, dead, unknown_fields_dropped, after_as_of = self._current_parser().parse_chunk_with_counts(chunk)
            batch = columns.to_record_batch() if len(columns) else None
            del columns  # free the parsed rows before the collector runs again
        # Events after an as-of time are outside the snapshot: not read by this build, counted apart.
        counts = {"read": len(chunk) - after_as_of, "invalid": len(dead)}
        if after_as_of:
            counts[AFTER_AS_OF_COUNT] = after_as_of
        if unknown_fields_dropped:
            counts[UNKNOWN_FIELDS_DROPPED] = unknown_fields_dropped
        yield pvalue.TaggedOutput(dl.COUNTS, counts)
        # Runner-visible; the manifest's counts come from the COUNTS output.
        stage_metrics.count("validate", {**counts, "parsed": batch.num_rows if batch is not None else 0})
        if dead:
            yield pvalue.TaggedOutput(dl.DEAD_LETTER, dl.to_record_batch(dead))
        if batch is not None:
            yield batch


class ValidateEvents(beam.PTransform):
    """RawChunks -> {VALID: pa.RecordBatch (EVENT_SCHEMA), DEAD_LETTER: pa.RecordBatch (DEAD_LETTER_SCHEMA),
    COUNTS: dict}."""

    def __init__(self, rules: RulesSource):
        super().__init__()
        self._rules = rules

    def expand(self, chunks):
        parsed = chunks | "Parse" >> beam.ParDo(ParseEventsFn(self._rules)).with_output_types(
            pa.RecordBatch).with_outputs(
            dl.DEAD_LETTER, dl.COUNTS, main=dl.VALID)
        return {dl.VALID: parsed[dl.VALID], dl.DEAD_LETTER: parsed[dl.DEAD_LETTER], dl.COUNTS: parsed[dl.COUNTS]}
