"""Bradley-Terry at 1M comparisons: the vectorised grouped fit, and `--method bradley_terry` built on it,
vs the per-prompt loops they replace.

    python benchmarks/bradley_terry_scale.py [--comparisons 1000000] [--prompts 50000] [--mode both] [--json PATH]

The set (seed 0): --prompts prompts, each with 2 + a geometric number of responses (p 0.35, at most
32; mean ~3.9). The comparisons are spread over the prompts by lognormal shares (sigma 1: most prompts
get a handful, a few get hundreds; each at least one); each compares two distinct responses of its
prompt, the winner drawn from the model with log-strengths ~ N(0, 1). Unweighted, as
`--method bradley_terry` fits them.

--mode fit (the core; both are run with the method's settings: prior 1, max_iter 1000, tol 1e-8):
- baseline: `baseline_bradley_terry`, the fit as it was before vectorisation (copied below), called once
  per prompt, as the method's per-prompt loop did. The per-prompt arrays are cut before the clock starts.
- vectorised: one `fit_grouped` call on the flat arrays (candidates numbered consecutively per prompt).
--mode method (the consensus method end to end, on one bucket holding every prompt):
- the same comparisons as preference votes, built as the tests build them (tests/event_builders.py:
  wire events through the real parser into one event table): comparison k of prompt p is annotator
  `a<k>`'s vote on item `p<p>`, label `r<winner>`, metadata.rejected `r<loser>`; the prompt's first vote
  carries a prompt text, every 10th vote the two responses' texts, and every 10th prompt also gets one
  unusable vote (no metadata.rejected). Built before any clock starts.
- baseline: `baseline_consensus_of`, the method's per-prompt path as it was (a `baseline_bradley_terry`
  call per prompt, copied below; the rows are assembled by the method's own `consensus_of_fits`), on the
  same table.
- vectorised: `BradleyTerry().consensus_of(table)` (one `fit_grouped` call for all prompts).
--mode both (default): fit, then method, in this process, each baseline before its vectorised run.

Prints the seconds of each, the speed ratio (baseline / vectorised) and whether the outputs are
identical: the log-strengths (largest absolute difference, must be <= --tolerance; the two are meant to
agree bit for bit) and, for the method, the consensus rows, annotator statistics and DPO export records
(pyarrow Table.equals). Exit code 1 if something differs or a fit did not converge.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from labelbeam.transforms.inference.bradley_terry import (
    NEWTON_STEPS,
    BradleyTerryResult,
    canonical_comparisons,
    components,
    fit_grouped,
    mm_update,
)
from labelbeam.transforms.inference.em import largest_change, run_em
from labelbeam.transforms.inference.preferences import (
    TIE_DECIMALS,
    ItemFit,
    PreferenceVote,
    unusable_reason,
    votes_by_item,
)
from labelbeam.transforms.methods.preferences import BradleyTerry, PreferenceConsensus

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from event_builders import event, event_table  # noqa: E402  (the tests' builders, found through sys.path)

PRIOR, MAX_ITER, TOL = 1.0, 1000, 1e-8   # the method's defaults (transforms/methods/preferences.py)


# --- the pre-vectorisation baseline -------------------------------------------------------------
# transforms/inference/bradley_terry.py as of commit 3ae5e6b: `bradley_terry`, its `_fit` and
# `best_shift`, which stops the Newton steps of all candidates together. canonical_comparisons,
# mm_update and components did not change and are imported.

def baseline_best_shift(log_strength: np.ndarray, component: np.ndarray) -> np.ndarray:
    n = len(log_strength)
    shift = np.zeros(n)
    for _ in range(NEWTON_STEPS):
        p = np.exp(-np.logaddexp(0.0, -(log_strength + shift[component])))
        gradient = np.bincount(component, weights=1 - 2 * p, minlength=n)
        curvature = 2 * np.bincount(component, weights=p * (1 - p), minlength=n)
        step = np.clip(np.divide(gradient, curvature, out=np.zeros(n), where=curvature > 0), -1.0, 1.0)
        shift += step
        if np.abs(step).max(initial=0.0) < 1e-14:
            break
    return log_strength + shift[component]


def baseline_bradley_terry(winner: np.ndarray, loser: np.ndarray, n_candidates: int, prior: float = PRIOR,
                           max_iter: int = MAX_ITER, tol: float = TOL) -> BradleyTerryResult:
    comparisons = canonical_comparisons(winner, loser, n_candidates)
    if n_candidates == 0:
        return BradleyTerryResult(np.zeros(0), 0, True)
    component = components(comparisons)
    (log_strength,), iterations, converged = run_em(
        (np.zeros(comparisons.n_candidates),),
        lambda parameters: parameters[0],
        lambda log_strength, _: (baseline_best_shift(mm_update(comparisons, log_strength, prior), component),),
        largest_change, max_iter, tol)
    return BradleyTerryResult(log_strength - log_strength.mean(), iterations, converged)


# The method's per-prompt path as of commit d39fe2f: transforms/inference/preferences.py's `fit_item`,
# with `baseline_bradley_terry` as the fit, one call per prompt. votes_by_item and the assembly of rows
# from fits (BradleyTerry.consensus_of_fits) did not change and are used as they are.

def baseline_fit_item(item_id: str, votes: list[PreferenceVote], prior: float = PRIOR, max_iter: int = MAX_ITER,
                      tol: float = TOL) -> ItemFit:
    usable = [vote for vote in votes if unusable_reason(vote) is None]
    candidates = sorted({vote.chosen for vote in usable} | {vote.rejected for vote in usable})
    position = {candidate: i for i, candidate in enumerate(candidates)}
    winner = np.array([position[vote.chosen] for vote in usable], dtype=np.int64)
    loser = np.array([position[vote.rejected] for vote in usable], dtype=np.int64)
    log_strength = baseline_bradley_terry(winner, loser, len(candidates), prior=prior, max_iter=max_iter,
                                          tol=tol).log_strength
    key = np.round(log_strength, TIE_DECIMALS)
    order = np.lexsort((np.arange(len(candidates)), -key))
    return ItemFit(item_id, candidates, log_strength, order, winner, loser, [vote.annotator_id for vote in usable],
                   len(votes) - len(usable))


def baseline_consensus_of(method: BradleyTerry, votes: pa.Table) -> PreferenceConsensus:
    """The method with one `baseline_fit_item` per prompt; turning the fits into rows never changed, so
    the method's own `consensus_of_fits` does it."""
    return method.consensus_of_fits(
        (baseline_fit_item(item_id, item_votes, method.prior, method.max_iter, method.tol), item_votes)
        for item_id, item_votes in votes_by_item(votes).items())


# --- the set and the two runs ---------------------------------------------------------------------

def generate(n_comparisons: int, n_prompts: int, seed: int = 0):
    """(group [n_candidates], winner, loser, start [n_prompts + 1], per_prompt [n_prompts]): prompt p's
    candidates are start[p]:start[p + 1], its comparisons the p-th run of per_prompt[p] in winner/loser."""
    if not 0 < n_prompts <= n_comparisons:
        raise ValueError("need 0 < --prompts <= --comparisons (every prompt gets a comparison)")
    rng = np.random.default_rng(seed)
    n_responses = 2 + np.minimum(rng.geometric(0.35, n_prompts) - 1, 30)
    share = rng.lognormal(0.0, 1.0, n_prompts)
    per_prompt = 1 + rng.multinomial(n_comparisons - n_prompts, share / share.sum())
    start = np.concatenate(([0], np.cumsum(n_responses)))
    log_strength = rng.normal(0.0, 1.0, start[-1])
    prompt = np.repeat(np.arange(n_prompts), per_prompt)
    size = n_responses[prompt]
    a = (rng.random(n_comparisons) * size).astype(np.int64)
    b = (a + 1 + (rng.random(n_comparisons) * (size - 1)).astype(np.int64)) % size   # != a
    a, b = a + start[prompt], b + start[prompt]
    a_wins = rng.random(n_comparisons) < 1 / (1 + np.exp(log_strength[b] - log_strength[a]))
    group = np.repeat(np.arange(n_prompts), n_responses)
    return group, np.where(a_wins, a, b), np.where(a_wins, b, a), start, per_prompt


def run_baseline(winner, loser, start, per_prompt) -> tuple[float, np.ndarray, int, bool]:
    """(seconds, log-strengths, most iterations of a prompt, every prompt converged) of the per-prompt loop."""
    bounds = np.concatenate(([0], np.cumsum(per_prompt)))
    prompts = [(winner[bounds[p]:bounds[p + 1]] - start[p], loser[bounds[p]:bounds[p + 1]] - start[p],
                int(start[p + 1] - start[p])) for p in range(len(per_prompt))]
    started = time.perf_counter()
    fits = [baseline_bradley_terry(*prompt) for prompt in prompts]
    seconds = time.perf_counter() - started
    return (seconds, np.concatenate([fit.log_strength for fit in fits]), max(fit.iterations for fit in fits),
            all(fit.converged for fit in fits))


def run_vectorised(group, winner, loser) -> tuple[float, np.ndarray, int, bool]:
    started = time.perf_counter()
    fit = fit_grouped(group, winner, loser, len(group), prior=PRIOR, max_iter=MAX_ITER, tol=TOL)
    return time.perf_counter() - started, fit.log_strength, fit.iterations, fit.converged


def preference_votes(winner, loser, start, per_prompt, chunk: int = 100_000) -> pa.Table:
    """The comparisons as preference votes (see the docstring), one event table as the tests build it."""
    prompt = np.repeat(np.arange(len(per_prompt)), per_prompt)
    nth = np.arange(len(prompt)) - np.repeat(np.cumsum(per_prompt) - per_prompt, per_prompt)   # k within prompt

    def events():
        for i, (p, k, chosen, rejected) in enumerate(zip(prompt.tolist(), nth.tolist(),
                                                          (winner - start[prompt]).tolist(),
                                                          (loser - start[prompt]).tolist())):
            metadata = {"rejected": f"r{rejected}"}
            if k == 0:
                metadata["prompt"] = f"Prompt {p}"
            if i % 10 == 0:
                metadata.update(chosen_text=f"Response {chosen} to prompt {p}",
                                rejected_text=f"Response {rejected} to prompt {p}")
            yield event(f"e{i:08d}", item=f"p{p:06d}", annotator=f"a{k}", label=f"r{chosen}", metadata=metadata)
        for p in range(0, len(per_prompt), 10):
            yield event(f"u{p:08d}", item=f"p{p:06d}", annotator="a-unusable", label="r0", metadata={})

    tables, batch = [], []
    for one in events():
        batch.append(one)
        if len(batch) == chunk:
            tables.append(event_table(batch))
            batch = []
    tables.append(event_table(batch))
    return pa.concat_tables(tables)


def run_method(winner, loser, start, per_prompt) -> dict:
    """Seconds of the baseline and the vectorised method on one table, and whether their outputs are equal."""
    started = time.perf_counter()
    votes = preference_votes(winner, loser, start, per_prompt)
    print(f"method: {votes.num_rows:,} preference votes built in {time.perf_counter() - started:.1f} s "
          f"(not timed below)")
    method = BradleyTerry()
    started = time.perf_counter()
    expected = baseline_consensus_of(method, votes)
    base_seconds = time.perf_counter() - started
    started = time.perf_counter()
    got = method.consensus_of(votes)
    vec_seconds = time.perf_counter() - started
    equal = {name: bool(a.schema == b.schema and a.equals(b))
             for name, a, b in zip(PreferenceConsensus._fields, got, expected)}
    statuses = dict(zip(*np.unique(got.labels.column("status").to_numpy(zero_copy_only=False), return_counts=True)))
    return {"votes": votes.num_rows, "items": got.labels.num_rows, "dpo_records": got.preferences.num_rows,
            "statuses": {str(k): int(v) for k, v in sorted(statuses.items())}, "baseline_seconds": base_seconds,
            "vectorised_seconds": vec_seconds, "ratio": base_seconds / vec_seconds, "equal": equal,
            "identical": all(equal.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=1_000_000)
    parser.add_argument("--prompts", type=int, default=50_000)
    parser.add_argument("--mode", choices=("fit", "method", "both"), default="both",
                        help="time the fit alone, the method end to end, or both (default)")
    parser.add_argument("--tolerance", type=float, default=1e-12,
                        help="largest absolute difference of log-strengths allowed (default 1e-12)")
    parser.add_argument("--json", metavar="PATH", help="also write the key figures to PATH as JSON")
    args = parser.parse_args(argv)
    group, winner, loser, start, per_prompt = generate(args.comparisons, args.prompts)
    n_responses = np.diff(start)
    print(f"{args.comparisons:,} comparisons, {args.prompts:,} prompts, {len(group):,} responses "
          f"(per prompt: mean {n_responses.mean():.1f}, max {n_responses.max()}); comparisons per prompt: "
          f"median {int(np.median(per_prompt))}, max {per_prompt.max():,}")
    figures, ok = {"comparisons": args.comparisons, "prompts": args.prompts, "responses": len(group),
                   "mode": args.mode}, True
    if args.mode in ("fit", "both"):
        base_seconds, base_strength, base_iterations, base_converged = run_baseline(winner, loser, start, per_prompt)
        vec_seconds, vec_strength, vec_iterations, vec_converged = run_vectorised(group, winner, loser)
        difference = float(np.abs(vec_strength - base_strength).max())
        identical = bool(np.array_equal(vec_strength, base_strength))
        ratio = base_seconds / vec_seconds
        print(f"{'fit':<34} {'seconds':>8} {'max iterations':>15} {'converged':>10}")
        print(f"{'baseline (loop over prompts)':<34} {base_seconds:>8.2f} {base_iterations:>15} {base_converged!s:>10}")
        print(f"{'vectorised (fit_grouped)':<34} {vec_seconds:>8.2f} {vec_iterations:>15} {vec_converged!s:>10}")
        print(f"speed ratio baseline / vectorised: {ratio:.1f}x")
        print(f"max |difference| of log-strengths: {difference:.3g} "
              f"({'bit for bit equal' if identical else 'not equal'})")
        fit_ok = difference <= args.tolerance and base_converged and vec_converged
        if not fit_ok:
            print(f"FAILED: difference above --tolerance {args.tolerance:g}, or a fit did not converge")
        ok &= fit_ok
        figures.update(baseline_seconds=base_seconds, vectorised_seconds=vec_seconds, ratio=ratio,
                       max_abs_difference=difference, bit_identical=identical,
                       baseline_max_iterations=base_iterations, vectorised_max_iterations=vec_iterations)
    if args.mode in ("method", "both"):
        method = run_method(winner, loser, start, per_prompt)
        print(f"{'method (BradleyTerry.consensus_of)':<34} {'seconds':>8}")
        print(f"{'baseline (fit per prompt)':<34} {method['baseline_seconds']:>8.2f}")
        print(f"{'vectorised (one fit_grouped)':<34} {method['vectorised_seconds']:>8.2f}")
        print(f"speed ratio baseline / vectorised: {method['ratio']:.1f}x")
        print(f"{method['items']:,} rows ({', '.join(f'{k} {v:,}' for k, v in method['statuses'].items())}), "
              f"{method['dpo_records']:,} DPO records; identical: "
              + ", ".join(f"{name} {'yes' if same else 'NO'}" for name, same in method["equal"].items()))
        if not method["identical"]:
            print("FAILED: the method's output differs from the per-prompt baseline's")
        ok &= method["identical"]
        figures.update({f"method_{key}": value for key, value in method.items()})
    figures["ok"] = ok
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(figures, stream, indent=2, sort_keys=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
