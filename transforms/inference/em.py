"""What every annotator model shares: sparse answers, the EM driver, gold clamping, and the
per-item log-likelihood and posterior helpers of the "right, or else from an error distribution"
models (one-coin, GLAD, MACE). Pure numpy, no Beam.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import numpy as np
from scipy import sparse

P = TypeVar("P")  # an EM model's parameters


class Answers(NamedTuple):
    """Sparse answers: answer j says annotator worker[j] gave item[j] the class label[j]."""
    item: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    n_items: int
    n_workers: int
    n_labels: int


def answer_counts(answers: Answers) -> sparse.csr_array:
    """The answers as a sparse [n_items, n_workers * n_labels] matrix: how often each item got each
    (worker, label) cell. Built once per fit, it turns the EM's sums into sparse products, each one C
    loop over the answers with no [n_answers, K] temporaries:

        per item, over its answers:            counts @ table        (table [n_workers * n_labels, K])
        per (worker, label), over its items:   counts.T @ per_item   (per_item [n_items, K])

    Built straight in CSR form (answers sorted by item need no sort; repeated cells stay separate
    entries, which the products add up), so its only memory is one value and one column index per answer.
    """
    n_cells = answers.n_workers * answers.n_labels
    index_type = np.int32 if max(n_cells, len(answers.item), answers.n_items) < 2 ** 31 else np.int64
    item = np.asarray(answers.item)
    cells = np.asarray(answers.worker).astype(index_type) * index_type(answers.n_labels)
    np.add(cells, answers.label, out=cells, casting="unsafe")   # in place: no second array of that size
    if len(item) > 1 and not (item[1:] >= item[:-1]).all():
        order = np.argsort(item, kind="stable")
        item, cells = item[order], cells[order]
    indptr = np.zeros(answers.n_items + 1, dtype=index_type)
    np.cumsum(np.bincount(item, minlength=answers.n_items), out=indptr[1:])
    return sparse.csr_array((np.ones(len(cells)), cells, indptr), shape=(answers.n_items, n_cells))


def vote_shares(answers: Answers, counts: sparse.csr_array | None = None) -> np.ndarray:
    """Soft majority vote: each item's share of answers per class; uniform for items without answers.

    `counts` is answer_counts(answers), built when not given."""
    counts = answer_counts(answers) if counts is None else counts
    label_of_cell = np.arange(answers.n_workers * answers.n_labels) % answers.n_labels
    # One product per label with that label's cells: memory n_items * n_labels, where a [cells, labels]
    # one-hot matrix would hold n_workers * n_labels**2 floats (576 MB at 20k annotators and 60 labels).
    per_label = np.stack([counts @ (label_of_cell == label).astype(np.float64)
                          for label in range(answers.n_labels)], axis=1).reshape(answers.n_items, answers.n_labels)
    totals = per_label.sum(axis=1, keepdims=True)
    return np.where(totals > 0, per_label / np.maximum(totals, 1), 1.0 / answers.n_labels)


def largest_change(old: tuple[np.ndarray, ...], new: tuple[np.ndarray, ...]) -> float:
    """Largest absolute difference between paired arrays (0 for empty ones)."""
    return max((np.abs(b - a).max(initial=0.0) for a, b in zip(old, new)), default=0.0)


def run_em(parameters: P, e_step: Callable[[P], np.ndarray], m_step: Callable[[np.ndarray, P], P],
           change: Callable[[P, P], float], max_iter: int, tol: float) -> tuple[P, int, bool]:
    """Alternate posteriors = e_step(parameters) and parameters = m_step(posteriors, parameters).

    Stops when change(old, new) < tol (converged) or after max_iter iterations, never because the
    likelihood wobbles. Returns (parameters, iterations run, converged). Every EM core here uses it.
    """
    for iteration in range(1, max_iter + 1):
        new_parameters = m_step(e_step(parameters), parameters)
        moved = change(parameters, new_parameters)
        parameters = new_parameters
        if moved < tol:
            return parameters, iteration, True
    return parameters, max_iter, False


class EMModel(abc.ABC, Generic[P]):
    """An annotator model fitted by EM whose M-step reads only sums over answers and items.

    `statistics` of disjoint sets of items add up, so the distributed EM (transforms/distributed_em.py)
    sums its buckets' and calls `parameters` once per iteration; `fit_em` makes the same calls on all
    answers at once. Both paths run this one numeric core.
    """
    name: ClassVar[str]
    needs_counts: ClassVar[bool] = False   # whether statistics and e_step read answer_counts

    def start(self, n_workers: int, n_labels: int) -> P | None:
        """The parameters the first statistics (of the vote shares) are read under; most models read none."""
        return None

    @abc.abstractmethod
    def statistics(self, answers: Answers, posteriors: np.ndarray, parameters: P | None,
                   counts: sparse.csr_array) -> tuple[np.ndarray, ...]:
        """The M-step's sufficient statistics: sums over the answers (counts is answer_counts(answers))."""

    @abc.abstractmethod
    def parameters(self, statistics: tuple[np.ndarray, ...]) -> P:
        """The M-step: parameters from summed statistics."""

    @abc.abstractmethod
    def e_step(self, answers: Answers, parameters: P, gold: np.ndarray | None,
               counts: sparse.csr_array | None = None) -> tuple[np.ndarray, float]:
        """(posteriors [n_items, K], log-likelihood of the answers); gold[i] >= 0 clamps item i."""

    @abc.abstractmethod
    def change(self, old: P, new: P) -> float:
        """The stopping rule's measure: the largest change of any probability."""


class EMFit(NamedTuple):
    parameters: Any
    posteriors: np.ndarray
    iterations: int
    converged: bool
    log_likelihood: float


def fit_em(model: EMModel, answers: Answers, gold: np.ndarray | None, max_iter: int, tol: float) -> EMFit:
    """Fit `model` in process: start from vote shares (gold clamped), then run_em."""
    counts = answer_counts(answers)

    def m_step(posteriors, parameters):
        return model.parameters(model.statistics(answers, posteriors, parameters, counts))

    start = model.start(answers.n_workers, answers.n_labels)
    parameters, iterations, converged = run_em(
        m_step(clamp_gold(vote_shares(answers, counts), gold), start),
        lambda params: model.e_step(answers, params, gold, counts)[0], m_step, model.change, max_iter, tol)
    posteriors, log_likelihood = model.e_step(answers, parameters, gold, counts)
    return EMFit(parameters, posteriors, iterations, converged, log_likelihood)


def item_offsets(answers: Answers) -> np.ndarray:
    """int64 [n_items + 1]: for answers sorted by item, item i's answers are [offsets[i], offsets[i + 1])."""
    offsets = np.zeros(answers.n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(answers.item, minlength=answers.n_items), out=offsets[1:])
    return offsets


def item_ranges(offsets: np.ndarray, max_answers: int) -> list[tuple[int, int]]:
    """Consecutive item ranges of at most max_answers answers plus one item's (items are never split),
    given item_offsets."""
    n_items = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.arange(max_answers, offsets[-1], max_answers), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [n_items]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def clamp_gold(posteriors: np.ndarray, gold: np.ndarray | None) -> np.ndarray:
    """Posteriors with gold items (gold[i] >= 0) set one-hot on their class."""
    if gold is not None:
        clamped = gold >= 0
        posteriors[clamped] = 0.0
        posteriors[clamped, gold[clamped]] = 1.0
    return posteriors


def canonical_answers(answers: Answers) -> Answers:
    """The same answers as int64 arrays sorted by (item, worker, label); raises ValueError if malformed.

    Fits run on this order so that results are byte-identical whatever order the answers came in.
    """
    item, worker, label = (np.asarray(a, dtype=np.int64) for a in (answers.item, answers.worker, answers.label))
    if not item.shape == worker.shape == label.shape or item.ndim != 1:
        raise ValueError("answers.item, answers.worker and answers.label must be 1-d arrays of equal length")
    if answers.n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {answers.n_labels}")
    for name, codes, bound in (("item", item, answers.n_items), ("worker", worker, answers.n_workers),
                               ("label", label, answers.n_labels)):
        if len(codes) and (codes.min() < 0 or codes.max() >= bound):
            raise ValueError(f"answers.{name} must lie in [0, {bound}); index the {name}s before fitting")
    n_items, n_workers, n_labels = int(answers.n_items), int(answers.n_workers), int(answers.n_labels)
    if len(item) and n_items * n_workers * n_labels < 2 ** 62:   # one packed int64 key sorts ~50x faster
        key = (item * n_workers + worker) * n_labels + label
        key.sort()
        item, rest = np.divmod(key, n_workers * n_labels)
        worker, label = np.divmod(rest, n_labels)
    else:
        order = np.lexsort((label, worker, item))
        item, worker, label = item[order], worker[order], label[order]
    return Answers(item, worker, label, n_items, n_workers, n_labels)


def checked_gold(gold: np.ndarray | None, n_items: int, n_labels: int) -> np.ndarray | None:
    """`gold` as int64 [n_items] with -1 for unknown; raises ValueError on a bad shape or class."""
    if gold is None:
        return None
    gold = np.asarray(gold, dtype=np.int64)
    if gold.shape != (n_items,):
        raise ValueError(f"gold must have shape ({n_items},), got {gold.shape}; use -1 for items without gold")
    if len(gold) and gold.max() >= n_labels:
        raise ValueError(f"gold classes must be < n_labels={n_labels}, got {gold.max()}")
    return gold


def fixed_log_priors(class_priors: np.ndarray | None, n_labels: int) -> np.ndarray:
    """Log of `class_priors` normalised to sum 1; uniform when None. Raises ValueError unless n_labels positive."""
    if class_priors is None:
        return np.full(n_labels, -np.log(n_labels))
    class_priors = np.asarray(class_priors, dtype=np.float64)
    if class_priors.shape != (n_labels,) or not (class_priors > 0).all():
        raise ValueError(f"class_priors must be {n_labels} positive numbers, got {class_priors!r}")
    return np.log(class_priors / class_priors.sum())


def class_log_likelihoods(answers: Answers, log_if_true: np.ndarray, log_if_other: np.ndarray) -> np.ndarray:
    """[n_items, n_labels]: sum over item i's answers j of log P(answer j | item's class is k).

    Answer j contributes log_if_true[j] to the class it names and log_if_other[j] to every other
    class. Never subtracts, so -inf entries (impossible answers, without smoothing) give -inf, not NaN.
    Memory is O(n_answers + n_items * n_labels).
    """
    n_items, n_labels = answers.n_items, answers.n_labels
    cell = answers.item * n_labels + answers.label
    named = np.bincount(cell, weights=log_if_true, minlength=n_items * n_labels).reshape(n_items, n_labels)
    if n_labels == 1:
        return named
    others = np.bincount(cell, weights=log_if_other, minlength=n_items * n_labels).reshape(n_items, n_labels)
    # not_named[i, k] = sum over l != k of others[i, l], as prefix + suffix sums.
    not_named = np.zeros_like(others)
    not_named[:, 1:] += np.cumsum(others[:, :-1], axis=1)
    not_named[:, :-1] += np.cumsum(others[:, :0:-1], axis=1)[:, ::-1]
    return named + not_named


def posteriors_from_log_joint(answers: Answers, log_joint: np.ndarray,
                              gold: np.ndarray | None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood) from log P(class k, item i's answers).

    Items without answers get uniform posteriors; gold[i] >= 0 clamps item i one-hot. The
    log-likelihood is that of the observed answers, gold or not.
    """
    n_labels = answers.n_labels
    top = log_joint.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)   # a row of -inf: every class impossible (no smoothing)
    weights = np.exp(log_joint - top)
    totals = weights.sum(axis=1, keepdims=True)
    posteriors = np.divide(weights, totals, out=np.full_like(weights, 1.0 / n_labels), where=totals > 0)
    answered = np.bincount(answers.item, minlength=answers.n_items) > 0
    posteriors[~answered] = 1.0 / n_labels
    with np.errstate(divide="ignore"):
        log_evidence = top[answered, 0] + np.log(totals[answered, 0])
    return clamp_gold(posteriors, gold), float(log_evidence.sum())
