"""The single-label methods: majority vote (plain and weighted) and the annotator models (ds,
one_coin, glad, mace), each binding a pure core of transforms/inference to an execution shape."""
from __future__ import annotations

import abc
import hashlib
import json
import math
from typing import ClassVar

import numpy as np
import pyarrow as pa

from labelbeam.transforms.inference.calibration import calibrated_with_gold
from labelbeam.transforms.inference.dawid_skene import DawidSkeneModel, dawid_skene
from labelbeam.transforms.inference.dawid_skene import e_step as dawid_skene_e_step
from labelbeam.transforms.inference.degenerate import degeneracy, named_classes
from labelbeam.transforms.inference.em import Answers, EMModel, clamp_gold
from labelbeam.transforms.inference.glad import GladModel, glad
from labelbeam.transforms.inference.mace import MaceModel, mace
from labelbeam.transforms.inference.mace import e_step as mace_e_step
from labelbeam.transforms.inference.one_coin import OneCoinModel, one_coin
from labelbeam.transforms.inference.one_coin import e_step as one_coin_e_step
from labelbeam.transforms.methods.base import (
    DISTRIBUTED_EM,
    EM_BEAM,
    EM_IN_PROCESS,
    GATHER_AND_FIT,
    BucketConsensus,
    ConsensusMethod,
    IndexedVotes,
    MethodRequest,
    PerItemMethod,
    consensus_from_posteriors,
    index_votes,
    with_fit_report,
)


def weighted_shares(answers: Answers, weights: np.ndarray | None) -> np.ndarray:
    """[n_items, n_labels] each item's (weighted) share of votes per class; all zero without votes."""
    cells = answers.item * answers.n_labels + answers.label  # bincount: far faster than np.add.at
    scores = np.bincount(cells, weights=weights, minlength=answers.n_items * answers.n_labels) \
        .astype(np.float64).reshape(answers.n_items, answers.n_labels)
    totals = scores.sum(axis=1, keepdims=True)
    return np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 0)


class MajorityVote(PerItemMethod):
    """The most frequent label; confidence is its share of the item's votes."""
    name = "mv"

    def answer_weights(self, indexed: IndexedVotes) -> np.ndarray | None:
        return None

    def posteriors(self, indexed):
        return weighted_shares(indexed.answers, self.answer_weights(indexed))


class WeightedMajorityVote(MajorityVote):
    """Majority vote where each vote counts its annotator's weight.

    Weights come from a CSV (annotator_id,weight) or from a previous build's annotator skills
    (keyed by pseudonym: `key` maps a raw annotator id to the key the weights use). Annotators
    without a weight weigh `default_weight`.
    """
    name = "wmv"
    takes_weights = True

    def __init__(self, weights: dict[str, float], min_votes: int = 1, default_weight: float = 1.0,
                 gold: dict[str, str] | None = None, key=None, source: dict | None = None):
        super().__init__(min_votes, gold)
        for annotator, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of annotator {annotator!r} must be a finite number >= 0, got {weight}")
        self.weights = dict(sorted(weights.items()))
        self.default_weight = default_weight
        self.key = key
        self.source = source

    @classmethod
    def from_request(cls, request: MethodRequest) -> WeightedMajorityVote:
        cls.refuse_unused(request)
        if request.weights is None:
            raise ValueError("--method wmv needs either --weights CSV (annotator_id,weight rows) or "
                             "--skills-from VERSION")
        return cls(request.weights, min_votes=request.min_votes, gold=request.gold, key=request.weights_key,
                   source=request.weights_source)

    def params(self) -> dict:
        # The weights are keyed by raw annotator ids (a --weights CSV): the manifest records their
        # digest and count, never the ids. Equal digests still mean equal weights, so equal results.
        return {**super().params(), "weights_sha256": hashlib.sha256(json.dumps(self.weights).encode()).hexdigest(),
                "weights_count": len(self.weights), "weights_from": self.source or "file",
                "default_weight": self.default_weight}

    def answer_weights(self, indexed):
        key = self.key or (lambda annotator: annotator)
        per_annotator = np.array([self.weights.get(key(a), self.default_weight)
                                  for a in indexed.annotator_ids.to_pylist()], dtype=np.float64)
        return per_annotator[indexed.answers.worker]


def weights_from_skills(skills: pa.Table, n_labels: int, floor: float = 0.01) -> dict[str, float]:
    """annotator pseudonym -> log((K-1) p / (1 - p)), the optimal vote weight of an annotator whose
    answers are right with probability p (one-coin model), clipped at 0 (no better than chance).

    p is the previous build's estimated accuracy, kept within [floor, 1 - floor] so a perfect
    record gives a large finite weight. Annotators without an accuracy are left to the default.
    """
    weights = {}
    for row in skills.select(["annotator", "accuracy"]).to_pylist():
        if row["accuracy"] is None:
            continue
        p = min(max(row["accuracy"], floor), 1 - floor)
        weights[row["annotator"]] = max(0.0, math.log(max(n_labels - 1, 1) * p / (1 - p)))
    return weights




def fit_report(model: str, reason: str | None, label_names: list[str] | None = None) -> dict:
    """What the manifest's consensus.fit says of a fit: degenerate or not, why (classes by name when
    known), and what was published instead."""
    if reason is None:
        return {"model": model, "degenerate": False}
    if label_names is not None:
        reason = named_classes(reason, label_names)
    return {"model": model, "degenerate": True, "fallback": MajorityVote.name, "reason": reason}


def majority_vote_fallback(answers: Answers, gold: np.ndarray | None) -> np.ndarray:
    """A degenerate fit's posteriors instead: vote shares, gold items clamped."""
    return clamp_gold(weighted_shares(answers, None), gold)


class AnnotatorModelMethod(ConsensusMethod):
    """A model of annotators fitted over all votes at once; confidence is the label's posterior.

    Two paths give the same answers (tested): `in_process` gathers all votes on one worker and
    fits there (fast for data that fits one machine); `beam` (every model here) runs the EM as
    Beam transforms over item buckets, so a managed runner spreads it across workers.
    Subclasses name the model and compute its posteriors.
    """
    max_iter: ClassVar[int] = 100
    tol: ClassVar[float] = 1e-5
    distributed: ClassVar[bool] = False  # whether the `beam` path exists for this model

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None, em: str = EM_IN_PROCESS):
        super().__init__(min_votes, gold)
        if em not in (EM_IN_PROCESS, EM_BEAM):
            raise ValueError(f"em must be {EM_IN_PROCESS} or {EM_BEAM}, got {em!r}")
        if em == EM_BEAM and not self.distributed:
            raise ValueError(f"--method {self.name} has no distributed EM; use --em {EM_IN_PROCESS}")
        self.em = em

    @classmethod
    def from_request(cls, request: MethodRequest) -> AnnotatorModelMethod:
        cls.refuse_unused(request, takes_em=True)
        return cls(min_votes=request.min_votes, gold=request.gold, em=request.em)

    def params(self) -> dict:
        return {**super().params(), "max_iter": self.max_iter, "tol": self.tol, "em": self.em}

    def posteriors(self, indexed):
        return self.checked_posteriors(indexed)[0]

    def checked_posteriors(self, indexed) -> tuple[np.ndarray, dict]:
        """(posteriors, fit report). The model's posteriors, with gold temperature-scaled on the gold items
        (calibration.py); if the fit is degenerate (inference/degenerate.py: label-switched or collapsed),
        the vote shares instead (majority vote, gold items clamped), and the report says so."""
        answers, gold = indexed.answers, indexed.gold
        if answers.n_labels == 0:  # only multi-label or rating votes: no class to infer
            return np.zeros((answers.n_items, 0)), fit_report(self.name, None)
        fit = self.fit_model(answers, gold)
        label_names = getattr(indexed, "label_names", None)
        report = fit_report(self.name, degeneracy(answers, fit.posteriors.argmax(axis=1)),
                            None if label_names is None else label_names.to_pylist())
        if report["degenerate"]:
            return majority_vote_fallback(answers, gold), report
        if gold is None or not (gold >= 0).any():
            return fit.posteriors, report
        return calibrated_with_gold(self.posteriors_from_votes(answers, fit), gold)[0], report

    def consensus_of(self, votes: pa.Table) -> BucketConsensus:
        if votes.num_rows == 0:
            return super().consensus_of(votes)
        indexed = index_votes(votes, self.gold)
        posteriors, report = self.checked_posteriors(indexed)
        result = consensus_from_posteriors(indexed, posteriors, self.min_votes)
        return result._replace(labels=with_fit_report(result.labels, report))

    @abc.abstractmethod
    def fit_model(self, answers: Answers, gold: np.ndarray | None):
        """The fitted model (a result with `posteriors`), gold items clamped while fitting."""

    @abc.abstractmethod
    def posteriors_from_votes(self, answers: Answers, fit) -> np.ndarray:
        """[n_items, n_labels] every item's posterior from its votes alone under the fitted model."""

    def em_model(self) -> EMModel | GladModel:
        """The model's EM core, for the distributed path (models with `distributed` set)."""
        raise NotImplementedError(f"--method {self.name} has no distributed EM")

    @property
    def shape(self) -> str:
        return DISTRIBUTED_EM if self.em == EM_BEAM else GATHER_AND_FIT


class DawidSkene(AnnotatorModelMethod):
    """Dawid-Skene: a full confusion matrix per annotator."""
    name = "ds"
    smoothing = 0.01
    distributed = True

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def fit_model(self, answers, gold):
        return dawid_skene(answers, self.max_iter, self.tol, self.smoothing, gold)

    def em_model(self) -> EMModel:
        return DawidSkeneModel(self.smoothing)

    def posteriors_from_votes(self, answers, fit):
        return dawid_skene_e_step(answers, np.log(fit.priors), np.log(fit.confusions))[0]


class OneCoin(AnnotatorModelMethod):
    """One-coin Dawid-Skene: one accuracy per annotator, errors spread evenly."""
    name = "one_coin"
    smoothing = 0.01
    distributed = True

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def fit_model(self, answers, gold):
        return one_coin(answers, self.max_iter, self.tol, self.smoothing, gold)

    def em_model(self) -> EMModel:
        return OneCoinModel(self.smoothing)

    def posteriors_from_votes(self, answers, fit):
        with np.errstate(divide="ignore"):
            return one_coin_e_step(answers, np.log(fit.priors), fit.accuracy)[0]


class Glad(AnnotatorModelMethod):
    """GLAD: annotator ability times item difficulty."""
    name = "glad"
    distributed = True

    def em_model(self) -> GladModel:
        return GladModel()

    def fit_model(self, answers, gold):
        return glad(answers, self.max_iter, self.tol, gold=gold)

    def posteriors_from_votes(self, answers, fit):
        return self.em_model().e_step(answers, (fit.ability, np.log(fit.inverse_difficulty)), None)[0]


class Mace(AnnotatorModelMethod):
    """MACE: each annotator is a spammer with some probability, with their own spam distribution."""
    name = "mace"
    distributed = True

    def fit_model(self, answers, gold):
        return mace(answers, self.max_iter, self.tol, gold=gold)

    def em_model(self) -> EMModel:
        return MaceModel()

    def posteriors_from_votes(self, answers, fit):
        return mace_e_step(answers, np.log(fit.priors), fit.competence,
                           fit.spam_distribution)[0]

