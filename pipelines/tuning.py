"""LabelbeamTuningOptions: Beam pipeline options that change speed, never the published bytes."""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from labelbeam.transforms.deduplicate import DEFAULT_BUCKETS
from labelbeam.transforms.storage.event_files import DEFAULT_CHUNK_EVENTS, DEFAULT_RANGE_BYTES

SHUFFLE_AUTO, SHUFFLE_FILES, SHUFFLE_RUNNER = "auto", "files", "runner"
SHUFFLE_MODES = (SHUFFLE_AUTO, SHUFFLE_FILES, SHUFFLE_RUNNER)


class LabelbeamTuningOptions(PipelineOptions):
    """Knobs that change speed, never the published bytes."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--num_buckets", type=int, default=DEFAULT_BUCKETS,
                            help="Shuffle buckets for deduplication and lifecycle (parallelism).")
        parser.add_argument("--chunk_events", type=int, default=DEFAULT_CHUNK_EVENTS,
                            help="Events per parsed Arrow batch.")
        parser.add_argument("--range_bytes", type=int, default=DEFAULT_RANGE_BYTES,
                            help="JSON Lines files larger than this are read in ranges by several workers.")
        parser.add_argument("--shuffle", choices=SHUFFLE_MODES, default=SHUFFLE_AUTO,
                            help="How events are grouped by bucket: 'files' passes them through local Arrow "
                                 "files so a local build's memory follows one bucket, not the input; 'runner' "
                                 "uses the runner's GroupByKey (the in-memory buffers of the local runner, "
                                 "the shuffle service of a managed one); 'auto' (default) is 'files' on the "
                                 "local runners and 'runner' elsewhere.")
        parser.add_argument("--shuffle_dir", default=None,
                            help="Where '--shuffle files' writes: a new directory in it for each run, removed "
                                 "after the run (default: the system's temporary directory).")
