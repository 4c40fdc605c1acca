"""LabelbeamTuningOptions: Beam pipeline options that change speed, never the published bytes."""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


class LabelbeamTuningOptions(PipelineOptions):
    """Knobs that change speed, never the published bytes."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--num_buckets", type=int, default=16,
                            help="Shuffle buckets for deduplication and lifecycle (parallelism).")
        parser.add_argument("--chunk_events", type=int, default=20_000,
                            help="Events per parsed Arrow batch.")
        parser.add_argument("--range_bytes", type=int, default=64 << 20,
                            help="JSON Lines files larger than this are read in ranges by several workers.")
