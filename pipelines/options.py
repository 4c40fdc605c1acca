"""Options of `labelbeam build`: the CLI contract's flags, tuning knobs, and the frozen BuildConfig.

The contract flags (--input, --labels, ...) are parsed with argparse rather than declared on a
PipelineOptions subclass because Dataflow's GoogleCloudOptions already owns `--labels` (job labels);
everything the CLI does not recognise passes through to Beam untouched. Tuning knobs that never
change results are a PipelineOptions subclass (tuning.py, imported only when a build runs, so
--help stays fast).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tempfile

from labelbeam.pipelines.errors import EXIT_CODES_HELP, UserError
from labelbeam.pipelines.logs import add_logging_arguments
from labelbeam.transforms.events import dead_letters as dl

DEFAULT_ROWS_PER_SHARD = 1_000_000
DEFAULT_MAX_INVALID_SHARE = 0.5  # the publish gate's default: a run that is mostly garbage publishes nothing
DEFAULT_OUTPUT = "labelbeam-data"  # the output root of `build` without --output, and of `versions`/`show`
# A dataset name becomes one folder under ROOT: no separators, no leading dot (".", "..", hidden) or dash.
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DATASET_NAME_PATTERN = f"^{_DATASET_NAME.pattern}$"
BUILD_EPILOG = "Other flags (--runner, --direct_num_workers, ...) pass through to Beam.\n\n" + EXIT_CODES_HELP


def check_dataset_name(name: str) -> str:
    """`name` if it is a valid dataset name (DATASET_NAME_PATTERN), else a UserError naming it and the rule."""
    if _DATASET_NAME.fullmatch(name) is None:
        raise UserError(f"--dataset {name!r} is not a valid dataset name: it becomes a folder under the output "
                        f"root, so it must match {DATASET_NAME_PATTERN} (letters, digits, '.', '_', '-'; "
                        "1-128 characters, starting with a letter or digit)")
    return name


def check_output_root(root: str, *below: str) -> None:
    """Nothing if ROOT/below[0]/below[1]/... can be created and written, else a one-line UserError naming the path.

    Every part that exists must be a directory, and the deepest existing one must take a new file: tried for
    real, since root ignores permission bits but not read-only mounts or immutable folders. Object-store roots
    are left to the version store.
    """
    if "://" in root and not root.startswith("file://"):
        return
    local_root = root[len("file://"):] if root.startswith("file://") else root
    paths = [os.path.join(local_root, *below[:depth]) for depth in range(len(below) + 1)]
    deepest = None
    for path in paths:
        if not os.path.exists(path):
            break
        if not os.path.isdir(path):
            raise UserError(f"--output {root}: {path} is not a directory")
        deepest = path
    if deepest is None:  # nothing exists yet: the nearest existing ancestor must take the new folders
        deepest = os.path.dirname(os.path.abspath(local_root))
        while not os.path.exists(deepest):
            deepest = os.path.dirname(deepest)
        if not os.path.isdir(deepest):
            raise UserError(f"--output {root}: {deepest} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=deepest, prefix=".labelbeam-write-check-"):
            pass
    except OSError as err:
        raise UserError(f"--output {root}: cannot write in {deepest}: {err.strerror or err}") from None


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    inputs: tuple[str, ...]
    output: str
    dataset: str
    labels: tuple[str, ...] | None = None
    method: str = "mv"
    weights_path: str | None = None
    gold_path: str | None = None
    min_votes: int = 1
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    force: bool = False
    truth_path: str | None = None  # known true labels (the embedded sample's) for the summary
    em: str = "auto"
    skills_from: str | None = None
    # Events after it plus the clock-skew allowance are BAD_TIMESTAMP; default: start of the build's UTC day.
    event_time_cutoff: str | None = None
    max_invalid_share: float = DEFAULT_MAX_INVALID_SHARE
    as_of: str | None = None  # an as-of snapshot: events stamped after it are left out (ISO 8601)
    skills_root: str | None = None  # where --skills-from finds its version (default: the output; rebuild sets it)
    # Write-audit-publish gates beyond max_invalid_share (conservation.quality_gate); off by default.
    max_reason_shares: tuple[tuple[str, float], ...] = ()
    min_agreement: float | None = None
    max_label_drift: float | None = None
    credit_names_path: str | None = None  # annotator_id,name of annotators who opted in to credit by name

    def __post_init__(self):
        check_dataset_name(self.dataset)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="PATTERN",
                        help="event file, glob or directory (repeatable; local or gs://) "
                             "(default: the embedded sample, generated into ./labelbeam-sample)")
    parser.add_argument("--output", metavar="ROOT", help=f"dataset root (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--dataset", help="dataset to build; events of other datasets are rejected. A folder name: "
                                          f"{DATASET_NAME_PATTERN} (default: sample; required "
                                          "with --input)")
    parser.add_argument("--labels", help="comma-separated label set; other labels are rejected "
                                         "(default: inferred from the votes and recorded)")
    parser.add_argument("--method", default="mv",
                        help="consensus method. Single label: mv (majority vote), wmv (weighted, needs --weights "
                             "or --skills-from), ds (Dawid-Skene), one_coin, glad, mace. Multi-label: multilabel "
                             "(per-class majority; the classes are --labels when given). Ratings (score): mean, "
                             "median, bias_corrected (annotator bias and noise, fitted over all ratings). Pairwise "
                             "preferences: bradley_terry (label = chosen response, metadata.rejected = the other; "
                             "also writes preferences-00000-of-00001.jsonl for DPO) (default: mv)")
    parser.add_argument("--weights", metavar="CSV", help="annotator_id,weight rows for --method wmv")
    parser.add_argument("--credit-names", metavar="CSV",
                        help="annotator_id,name rows of annotators who chose to be credited by name: the card lists "
                             "the names of those who contributed, never linked to their pseudonyms. Nobody is "
                             "named without it")
    parser.add_argument("--skills-from", metavar="VERSION",
                        help="for --method wmv: weigh each annotator by the accuracy a previous version of this "
                             "dataset estimated (a version number or 'latest'; needs the same "
                             "LABELBEAM_PSEUDONYM_KEY)")
    parser.add_argument("--gold", metavar="CSV", help="item_id,label rows of known answers: they score the "
                                                     "annotators (gold accuracy), and the annotator models "
                                                     "(ds, one_coin, glad, mace) keep these items at their "
                                                     "label while fitting")
    parser.add_argument("--em", choices=("auto", "in_process", "beam"), default="auto",
                        help="where an annotator model (ds, one_coin, glad, mace) fits: in_process (all votes "
                             "on one worker), beam (EM as Beam transforms across workers), auto (beam on managed "
                             "runners and labelbeam's Dask runner, else in_process) (default: auto)")
    parser.add_argument("--min-votes", type=int, default=1, metavar="K",
                        help="items with fewer votes get status needs_more_votes (default: 1)")
    parser.add_argument("--as-of", metavar="TIME",
                        help="build the snapshot as of this time: ISO 8601 (2026-11-30T00:00:00Z) or relative to "
                             "the run's clock (yesterday, today, now, with steps such as today-1h), resolved once "
                             "and recorded in the manifest. Events stamped after it are left out and counted as "
                             "after_as_of, and files in a log's later dt=/hr= partitions are not read, so a "
                             "night's build publishes once however often it runs (default: no snapshot; events "
                             "up to two days past the start of today are accepted)")
    parser.add_argument("--max-invalid-share", type=float, default=DEFAULT_MAX_INVALID_SHARE, metavar="SHARE",
                        help="publish gate: publish nothing (exit 3) when more than this share of the events read "
                             f"is invalid (default: {DEFAULT_MAX_INVALID_SHARE})")
    parser.add_argument("--max-dead-letter-share", action="append", default=[], metavar="REASON=SHARE",
                        help="publish gate: publish nothing (exit 3) when dead letters of REASON (e.g. "
                             "UNKNOWN_LABEL) exceed this share of the events read (repeatable)")
    parser.add_argument("--min-agreement", type=float, metavar="A",
                        help="publish gate: publish nothing (exit 3) when the mean per-item agreement is below A")
    parser.add_argument("--max-label-drift", type=float, metavar="D",
                        help="publish gate: publish nothing (exit 3) when the consensus label distribution moved "
                             "more than D (total variation distance, 0-1) from the previous version's")
    parser.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true",
                        help="publish a new version even if inputs, params and code are unchanged")
    add_logging_arguments(parser)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="SOURCE",
                        help="pubsub://projects/P/subscriptions/S (unbounded), a directory or a file pattern (bounded: "
                             "read once in streaming mode, then the run ends)")
    parser.add_argument("--output", required=True, metavar="LOG_ROOT",
                        help="the event log's root: events/dt=YYYY-MM-DD/hr=HH/*.avro, rejected/..., _runs/ (local or gs://)")
    parser.add_argument("--dataset", required=True, help="dataset of the events (events of others are dead-lettered)")
    parser.add_argument("--labels", help="comma-separated label set; other labels are dead-lettered (default: any)")
    parser.add_argument("--allowed-lateness-hours", type=float, default=1.0, metavar="H",
                        help="an hour of the log takes late events until the watermark is H hours past its end; "
                             "later ones are dead-lettered TOO_LATE (default: 1)")
    parser.add_argument("--dedup-ttl-hours", type=float, default=24.0, metavar="H",
                        help="how long event ids are remembered for deduplication; the nightly build catches "
                             "duplicates beyond it (default: 24)")
    parser.add_argument("--num-buckets", type=int, default=16, help="event-id buckets: the keys of the dedup "
                                                                     "state (parallelism; default: 16)")
    parser.add_argument("--watch", action="store_true",
                        help="watch the --source directory until Ctrl-C or SIGTERM, reading files as they are dropped "
                             "into it (local runner), then drain: every open hour is written. Files read by an "
                             "earlier run into the same LOG_ROOT are skipped")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="with --watch: how often the directory "
                                                                        "is listed (default: 1)")
    add_logging_arguments(parser)


def add_rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", nargs="?", default=DEFAULT_OUTPUT,
                        help=f"dataset root given to build --output (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--dataset", default="sample", help="(default: sample)")
    parser.add_argument("--version", type=int, required=True, help="the published version to rebuild")
    parser.add_argument("--scratch", metavar="DIR",
                        help="build into this root and keep it (default: a temporary folder, removed after)")
    add_logging_arguments(parser)


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))
    if not labels:
        raise UserError(f"--labels {text!r} names no label; give e.g. --labels cat,dog")
    return labels


def parse_reason_shares(items: list[str]) -> tuple[tuple[str, float], ...]:
    """--max-dead-letter-share REASON=SHARE items, checked: a known reason, a share between 0 and 1."""
    shares = {}
    for item in items:
        reason, _, text = item.partition("=")
        reason = reason.strip().upper()
        if reason not in dl.REASONS:
            raise UserError(f"--max-dead-letter-share {item!r}: {reason or 'REASON'} is not a dead-letter reason; "
                            f"one of {', '.join(dl.REASONS)}")
        try:
            share = float(text)
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise UserError(f"--max-dead-letter-share {item!r}: give REASON=SHARE with a share between 0 and 1")
        shares[reason] = share
    return tuple(sorted(shares.items()))
