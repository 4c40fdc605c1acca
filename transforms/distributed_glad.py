"""GLAD's EM as a Beam computation over item buckets: the in-process M-step (inference/glad.py), distributed.

    votes -> IndexBuckets -> [ItemStep_t -> SumAbilityStatistics_t -> ProposeAbility_t
                              -> TermsAtNewton_t -> SumTerms_t -> AcceptAbility_t] x (1 + max_iter) -> PosteriorsOfFit

GLAD has one parameter per item (its difficulty, log beta) as well as one per annotator (ability,
alpha). The item parameters live with their bucket, which holds all of each item's answers, so their
steps run there exactly as in process. The abilities are global: each alpha step reads two sums over
every answer of the annotator - the Newton step's statistics, then the annotator's term of Q at the
Newton candidate, to keep or refuse it - so each EM iteration is two passes over the buckets, each
summed by a CombineGlobally. Pass 0 is the first M-step, from the vote shares, as glad() starts.

Sums are taken in fixed point (as the other models' are: bit-identical in any combine order), rounded
once per element. Once the parameters stop moving (largest change of any alpha or log beta < tol, the
in-process rule), buckets leave the loop with their final difficulties, and the remaining passes have
nothing to read.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from labelbeam.transforms import coders
from labelbeam.transforms.distributed_em import (
    AnnotatorFitOnBeam,
    AnswerShard,
    EMState,
    FitAnnotatorModelOnBeam,
    IndexBuckets,
    PosteriorsOfFit,
    SumCountsFn,
    from_fixed_point,
    to_fixed_point,
)
from labelbeam.transforms.inference.em import clamp_gold, vote_shares
from labelbeam.transforms.inference.glad import (
    AbilityProposal,
    AbilityStatistics,
    GladModel,
    ability_proposal,
    ability_statistics,
    ability_terms,
    accepted_ability,
    item_step,
)


class GladBucket(NamedTuple):
    """A bucket in the loop: its answers, its items' log beta (None until the first pass, which reads
    the answers anyway), and (between the two passes of an iteration) the posteriors the iteration's
    M-step reads."""
    shard: AnswerShard
    log_beta: np.ndarray | None = None
    posteriors: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.shard.nbytes + sum(getattr(part, "nbytes", 0) for part in (self.log_beta, self.posteriors))


class GladState(NamedTuple):
    ability: np.ndarray | None                # None: nothing to fit (no single-label vote anywhere)
    iterations: int
    converged: bool
    proposal: AbilityProposal | None = None   # between the two passes of an iteration
    largest_item_change: float = 0.0          # of this iteration's item steps, over all buckets


for glad_type in (GladBucket, GladState):
    beam.coders.registry.register_coder(glad_type, coders.SizedCoder)

FINISHED = "finished"
NEXT = "next"


class SumsAndLargestFn(SumCountsFn):
    """(fixed-point sums..., largest): adds the sums and keeps the largest of the last part."""

    def add_input(self, accumulator, counts):
        if accumulator is None:
            return tuple(counts)
        return (*super().add_input(accumulator[:-1], counts[:-1]), max(accumulator[-1], counts[-1]))


def start_state(index, model: GladModel) -> GladState:
    if not index.labels:
        return GladState(None, 0, True)
    return GladState(np.full(len(index.annotators), model.ability_prior.mean), 0, False)


def item_steps(bucket: GladBucket, state: GladState, model: GladModel, first: bool):
    """Pass 1 of an iteration: the E-step (vote shares on the first pass), this bucket's item steps, and
    its share of the ability statistics under the new log beta. A converged fit's buckets leave the loop."""
    if state.converged:
        yield pvalue.TaggedOutput(FINISHED, bucket._replace(posteriors=None))
        return
    compact = bucket.shard.bucket().compact
    answers, gold = compact.answers(), compact.gold()
    if first:   # glad()'s start: vote shares, difficulties at their prior mean
        posteriors = clamp_gold(vote_shares(answers), gold)
        previous = np.full(compact.n_items, model.log_beta_prior.mean)
    else:
        posteriors, previous = model.e_step(answers, (state.ability, bucket.log_beta), gold)[0], bucket.log_beta
    p_right = posteriors[answers.item, answers.label]
    log_beta = item_step(answers, p_right, state.ability, previous, model.log_beta_prior, model.m_step_iterations)
    moved = float(np.abs(log_beta - previous).max(initial=0.0))
    yield (*to_fixed_point(ability_statistics(answers, p_right, state.ability, log_beta)), moved)
    yield pvalue.TaggedOutput(NEXT, GladBucket(bucket.shard, log_beta, posteriors))


def proposed_state(sums, state: GladState, model: GladModel) -> GladState:
    if sums is None or state.converged:
        return state
    statistics = AbilityStatistics(*from_fixed_point(sums[:-1]))
    return state._replace(proposal=ability_proposal(statistics, state.ability, model.ability_prior),
                          largest_item_change=sums[-1])


def newton_terms(bucket: GladBucket, state: GladState):
    """Pass 2: this bucket's share of every annotator's term of Q at their Newton candidate."""
    answers = bucket.shard.bucket().compact.answers()
    p_right = bucket.posteriors[answers.item, answers.label]
    yield to_fixed_point((ability_terms(answers, p_right, state.proposal.newton, bucket.log_beta),))
    yield pvalue.TaggedOutput(NEXT, bucket._replace(posteriors=None))


def accepted_state(sums, state: GladState, model: GladModel, iteration: int, tol: float) -> GladState:
    if sums is None or state.converged:
        return state
    ability = accepted_ability(state.proposal, from_fixed_point(sums)[0], model.ability_prior)
    moved = max(float(np.abs(ability - state.ability).max(initial=0.0)), state.largest_item_change)
    # Pass 0 is the M-step from the vote shares; run_em counts and checks the iterations after it.
    return GladState(ability, iteration, iteration > 0 and moved < tol)


def bucket_state(bucket: GladBucket, state: GladState) -> tuple[AnswerShard, EMState]:
    parameters = None if state.ability is None else (state.ability, bucket.log_beta)
    return bucket.shard, EMState(parameters, state.iterations, state.converged)


def fit_state(state: GladState) -> EMState:
    return EMState(state.ability, state.iterations, state.converged)


# Beam's local runner walks the pipeline graph recursively (fn_api_runner/translations.py,
# compute_downstream_side_inputs); measured here, an unrolled loop needs ~15 frames per pass.
FRAMES_PER_PASS = 15


class FitGladOnBeam(AnnotatorFitOnBeam):
    """Vote tables (each holding all votes of its items) -> GLAD's posteriors per bucket, as
    FitAnnotatorModelOnBeam returns them: {"posteriors", "index", "state", "report"(, "temperature")}.
    `model` is a GladModel."""

    def expand(self, votes):
        model, tol = self._model, self._tol
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 2000 + 2 * FRAMES_PER_PASS * (self._max_iter + 1)))
        indexed = votes | "Index" >> IndexBuckets(self._gold, self._answers_per_element, self._spill_dir)
        index = indexed["index"]
        state = index | "StartState" >> beam.Map(start_state, model)
        flowing = indexed["buckets"] | "StartBuckets" >> beam.Map(GladBucket).with_output_types(GladBucket)
        finished = []
        for iteration in range(self._max_iter + 1):
            stepped = (flowing
                       | f"ItemStep{iteration}" >> beam.FlatMap(item_steps, pvalue.AsSingleton(state), model,
                                                                iteration == 0)
                       .with_outputs(NEXT, FINISHED, main="sums"))
            finished.append(stepped[FINISHED])
            state = (stepped["sums"]
                     | f"SumAbilityStatistics{iteration}" >> beam.CombineGlobally(SumsAndLargestFn())
                     | f"ProposeAbility{iteration}" >> beam.Map(proposed_state, pvalue.AsSingleton(state), model))
            checked = (stepped[NEXT]
                       | f"TermsAtNewton{iteration}" >> beam.FlatMap(newton_terms, pvalue.AsSingleton(state))
                       .with_outputs(NEXT, main="sums"))
            flowing = checked[NEXT]
            state = (checked["sums"]
                     | f"SumTerms{iteration}" >> beam.CombineGlobally(SumCountsFn())
                     | f"AcceptAbility{iteration}" >> beam.Map(accepted_state, pvalue.AsSingleton(state), model,
                                                               iteration, tol))
        final = ((*finished, flowing) | "FinalBuckets" >> beam.Flatten()
                 | "WithTheirState" >> beam.Map(bucket_state, pvalue.AsSingleton(state)))
        fitted = final | "PosteriorsOfFit" >> PosteriorsOfFit(model, self._gold, index)
        return {**fitted, "index": index, "state": state | "FitState" >> beam.Map(fit_state)}


def fit_on_beam(model, *args, **kwargs) -> beam.PTransform:
    """Any annotator model's distributed fit: GLAD's loop (it has item parameters), else the EMModel loop."""
    return (FitGladOnBeam if isinstance(model, GladModel) else FitAnnotatorModelOnBeam)(model, *args, **kwargs)
