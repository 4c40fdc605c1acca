"""ComputeConsensus: vote tables -> consensus rows and partial annotator statistics, by the method's shape.

A method (transforms/methods) says what to compute; the shapes here say how Beam runs it:
- AggregatePerItem: each bucket of items alone (mv, wmv, multilabel, mean, median, bradley_terry),
  with one corpus-wide statistic as a side input where the method needs it;
- FitAllVotes: every vote gathered on one worker, one fit (the annotator models in process,
  bias_corrected);
- FitDistributedEM: an annotator model's EM (ds, one_coin, glad, mace) as Beam transforms over item buckets
  (`--em beam`).
"""
from __future__ import annotations

import operator

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue

from labelbeam.transforms import coders, stage_metrics
from labelbeam.transforms.distributed_em import bucket_consensus
from labelbeam.transforms.distributed_glad import fit_on_beam
from labelbeam.transforms.methods.base import (
    DISTRIBUTED_EM,
    GATHER_AND_FIT,
    PER_ITEM,
    VOTE_COLUMNS,
    BucketConsensus,
    ConsensusMethod,
)
from labelbeam.transforms.methods.preferences import PreferenceConsensus

# Output tags: every shape returns {LABELS, ANNOTATOR_STATS}, bradley_terry also PREFERENCES.
LABELS, ANNOTATOR_STATS, PREFERENCES = "labels", "annotator_stats", "preferences"

for _result_type in (BucketConsensus, PreferenceConsensus):
    beam.coders.registry.register_coder(_result_type, coders.SizedCoder)


class SplitConsensus(beam.PTransform):
    """PCollection[a NamedTuple of tables] -> {field name: PCollection[pa.Table]}.

    Typed Maps rather than tagged outputs: Beam types tagged outputs as Any and would pickle, and
    sample sizes by encoding, every table; typed, they get the Arrow coder. The Maps fuse with
    their producer, so nothing is encoded between them.
    """

    def __init__(self, fields: tuple[str, ...] = BucketConsensus._fields):
        super().__init__()
        self._fields = fields

    def expand(self, results):
        return {field: results | f"Take_{field}" >> beam.Map(_measured if field == LABELS else operator.attrgetter(
            field)).with_output_types(pa.Table) for field in self._fields}


def _measured(result) -> pa.Table:
    """The result's labels table, counted into the consensus stage's metrics."""
    stage_metrics.count("consensus", {"items": result.labels.num_rows})
    stage_metrics.observe("consensus", "table_items", result.labels.num_rows)
    return result.labels


class AggregatePerItem(beam.PTransform):
    """Each vote table's items on their own: method.consensus_of per table."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        method = self._method
        if method.needs_corpus_statistic:
            statistic = (votes
                         | "BucketStatistic" >> beam.Map(method.bucket_statistic)
                         | "GatherStatistics" >> beam.combiners.ToList()
                         | "CorpusStatistic" >> beam.Map(method.corpus_statistic))
            results = votes | "AggregatePerItem" >> beam.Map(
                method.consensus_of, pvalue.AsSingleton(statistic)).with_output_types(method.result_type)
        else:
            results = votes | "AggregatePerItem" >> beam.Map(method.consensus_of).with_output_types(
                method.result_type)
        return results | "SplitOutputs" >> SplitConsensus(method.result_type._fields)


class FitAllVotes(beam.PTransform):
    """Every vote on one worker, one fit: method.consensus_of over all votes."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        return (votes
                | "GatherVotes" >> beam.combiners.ToList()
                | "FitAllVotes" >> beam.Map(self._fit).with_output_types(self._method.result_type)
                | "SplitOutputs" >> SplitConsensus(self._method.result_type._fields))

    def _fit(self, tables: list[pa.Table]):
        return self._method.consensus_of(pa.concat_tables(tables) if tables else VOTE_COLUMNS.empty_table())


class FitDistributedEM(beam.PTransform):
    """An annotator model's EM over item buckets (transforms/distributed_em.py), then each bucket's rows.

    With a scratch directory, the EM's answers are spilled there and iterations move file names."""

    def __init__(self, method: ConsensusMethod, scratch_dir: str | None = None):
        super().__init__()
        self._method = method
        self._scratch_dir = scratch_dir

    def expand(self, votes):
        method = self._method
        fitted = votes | "FitAnnotatorModelOnBeam" >> fit_on_beam(
            method.em_model(), method.gold, method.max_iter, method.tol, spill_dir=self._scratch_dir)
        return (fitted["posteriors"]
                | "ConsensusOfBuckets" >> beam.Map(bucket_consensus, pvalue.AsSingleton(fitted["index"]),
                                                   method.min_votes, pvalue.AsSingleton(fitted["report"]))
                .with_output_types(BucketConsensus)
                | "SplitOutputs" >> SplitConsensus())


SHAPES = {PER_ITEM: AggregatePerItem, GATHER_AND_FIT: FitAllVotes, DISTRIBUTED_EM: FitDistributedEM}


class ComputeConsensus(beam.PTransform):
    """Vote tables -> {LABELS: consensus tables, ANNOTATOR_STATS: partial annotator statistics}, plus
    PREFERENCES (DPO export records) for bradley_terry."""

    def __init__(self, method: ConsensusMethod, scratch_dir: str | None = None):
        super().__init__()
        if method.shape not in SHAPES:
            raise ValueError(f"method {method.name} has unknown shape {method.shape!r}; known: {sorted(SHAPES)}")
        self._method = method
        self._scratch_dir = scratch_dir   # where a shape may keep intermediate data out of the runner's memory

    def expand(self, votes):
        shape = SHAPES[self._method.shape]
        run = shape(self._method, self._scratch_dir) if shape is FitDistributedEM else shape(self._method)
        return votes | "RunMethod" >> run
