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

from labelbeam.pipelines.errors import UserError

DEFAULT_ROWS_PER_SHARD = 1_000_000


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


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="PATTERN",
                        help="event file, glob or directory (repeatable; local or gs://). "
                             "Without --input, builds the embedded sample.")
    parser.add_argument("--output", metavar="ROOT", help="dataset root (default ./labelbeam-data)")
    parser.add_argument("--dataset", help="dataset to build (events of other datasets are rejected)")
    parser.add_argument("--labels", help="comma-separated label set; other labels are rejected "
                                         "(default: inferred from the votes and recorded)")
    parser.add_argument("--method", default="mv",
                        help="consensus method. Single label: mv (majority vote), wmv (weighted, needs --weights "
                             "or --skills-from), ds (Dawid-Skene), one_coin, glad, mace. Multi-label: multilabel "
                             "(per-class majority; the classes are --labels when given). Ratings (score): mean, "
                             "median, bias_corrected (annotator bias and noise, fitted over all ratings). Pairwise "
                             "preferences: bradley_terry (label = chosen response, metadata.rejected = the other; "
                             "also writes preferences-00000-of-00001.jsonl for DPO)")
    parser.add_argument("--weights", metavar="CSV", help="annotator_id,weight rows for --method wmv")
    parser.add_argument("--skills-from", metavar="VERSION",
                        help="for --method wmv: weigh each annotator by the accuracy a previous version of this "
                             "dataset estimated (a version number or 'latest'; needs the same "
                             "LABELBEAM_PSEUDONYM_KEY)")
    parser.add_argument("--gold", metavar="CSV", help="item_id,label rows of known answers: they score the "
                                                     "annotators (gold accuracy), and the annotator models "
                                                     "(ds, one_coin, glad, mace) keep these items at their "
                                                     "label while fitting")
    parser.add_argument("--em", choices=("auto", "in_process", "beam"), default="auto",
                        help="where --method ds fits: in_process (all votes on one worker), beam (EM as "
                             "Beam transforms across workers), auto (beam on managed runners, else in_process)")
    parser.add_argument("--min-votes", type=int, default=1, metavar="K",
                        help="items with fewer votes get status needs_more_votes (default 1)")
    parser.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true",
                        help="publish a new version even if inputs, params and code are unchanged")


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))
    if not labels:
        raise UserError(f"--labels {text!r} names no label; give e.g. --labels cat,dog")
    return labels
