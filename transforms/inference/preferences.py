"""Pairwise preferences: per-prompt Bradley-Terry consensus and the DPO export. Pure numpy/pyarrow, no Beam.

Event encoding (a preference vote is an ordinary v2 annotation event):
- `item_id` is the prompt; the candidates are the responses to it (ids are free strings).
- `label` is the id of the preferred (chosen) response, `metadata["rejected"]` the id of the other one.
- optional texts: `metadata["prompt"]` (the prompt), `metadata["chosen_text"]` (the text of `label`),
  `metadata["rejected_text"]` (the text of `metadata["rejected"]`).
- the lifecycle keeps one standing vote per (item, annotator), so an annotator contributes one
  comparison per prompt (the latest; a DELETE withdraws it).
- validation checks `label` against `--labels` when given; with preferences it is a response id, so
  builds of preference data normally leave `--labels` out.

Unusable votes: a vote without `label`, without a non-empty `metadata["rejected"]`, or with
rejected == label compares nothing. It is not dropped silently: it stays counted in the manifest's
`votes` and the item's row (which exists even if none of its votes is usable), but not in the row's
`num_votes`, which counts usable comparisons only; the manifest's `consensus` section reports
`votes_used` (sum of num_votes) and `votes_unused` (votes - votes_used). `unusable_reason` says why.

Consensus of one prompt (`fit_items` + `consensus_fields`):
- Bradley-Terry log-strengths of the prompt's responses (transforms/bradley_terry.py, MAP with
  `prior` pseudo-games, mean 0). Responses of different prompts are never compared, so each prompt is
  fitted alone (per prompt == global; fits of separate prompts never interact, so the bytes do not
  depend on how prompts are bucketed). `fit_items` fits all prompts of a bucket with one grouped call,
  which gives each prompt bit for bit its fit alone.
- Ranking: log-strengths rounded to TIE_DECIMALS decimals (the fit is accurate to ~1e-8), descending;
  equal rounded strengths are tied and ordered by the smallest response id.
- `label` = the first response of the ranking; status `tie` when the runner-up has the same rounded
  strength.
- `confidence` = P(label beats the runner-up) = sigmoid(s_label - s_runner_up), exactly 0.5 for a tie.
  Every usable comparison names two different responses, so a prompt with a usable comparison has at
  least two candidates; a prompt without one has no label, confidence 0 and status needs_more_votes.
- `num_votes` = usable comparisons; `agreement` = share of them whose chosen response comes first in
  the ranking (null below two comparisons: one comparison always agrees with the ranking it made).

DPO export (`export_record`): one record per prompt with >= 2 candidates, {"item_id", "prompt",
"chosen", "rejected", "confidence"}: chosen = the first response of the ranking, rejected = the last,
confidence = P(chosen beats rejected) (0.5 if all are tied). Texts come from the metadata: the prompt
from the vote with the smallest event_id that gives a non-empty `prompt`; a response's text from the
vote with the smallest event_id that gives a non-empty text for it (as `chosen_text` when it is the
vote's label, `rejected_text` when it is the vote's rejected); without one, the item id / response
id stands in. `export_lines` writes them sorted by item_id, json.dumps(sort_keys=True,
ensure_ascii=False), UTF-8, "\n" after each: the prompt/chosen/rejected format TRL's DPOTrainer reads.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from labelbeam.transforms.inference.bradley_terry import fit_grouped, win_probability

REJECTED, PROMPT, CHOSEN_TEXT, REJECTED_TEXT = "rejected", "prompt", "chosen_text", "rejected_text"
TIE_DECIMALS = 6
HIGHER, LOWER = "preferred=higher_ranked", "preferred=lower_ranked"

PREFERENCE_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False),
    pa.field("rejected", pa.string(), nullable=False),
    pa.field("confidence", pa.float64(), nullable=False),
])


class PreferenceVote(NamedTuple):
    event_id: str
    annotator_id: str
    chosen: str | None
    rejected: str | None
    prompt: str | None
    chosen_text: str | None
    rejected_text: str | None


def unusable_reason(vote: PreferenceVote) -> str | None:
    """Why a vote compares nothing, or None if it is a usable comparison."""
    if vote.chosen is None:
        return "no label (the chosen response)"
    if not vote.rejected:
        return "no metadata.rejected"
    if vote.rejected == vote.chosen:
        return "metadata.rejected equals label"
    return None


def votes_by_item(votes: pa.Table) -> dict[str, list[PreferenceVote]]:
    """item_id -> its votes sorted by event_id, items in item_id order."""
    columns = votes.select(["item_id", "event_id", "annotator_id", "label", "metadata"]).to_pydict()
    grouped: dict[str, list[PreferenceVote]] = {}
    for item, event_id, annotator, label, metadata in zip(columns["item_id"], columns["event_id"],
                                                          columns["annotator_id"], columns["label"],
                                                          columns["metadata"]):
        meta = dict(metadata or [])
        grouped.setdefault(item, []).append(PreferenceVote(event_id, annotator, label, meta.get(REJECTED) or None,
                                                           meta.get(PROMPT) or None, meta.get(CHOSEN_TEXT) or None,
                                                           meta.get(REJECTED_TEXT) or None))
    return {item: sorted(grouped[item]) for item in sorted(grouped)}


class ItemFit(NamedTuple):
    item_id: str
    candidates: list[str]       # sorted response ids of the usable comparisons
    log_strength: np.ndarray    # [n_candidates], mean 0
    order: np.ndarray           # candidate indices, best first (rounded strength desc, then smallest id)
    winner: np.ndarray          # [n_comparisons] candidate index of each usable comparison's chosen response
    loser: np.ndarray
    annotators: list[str]       # [n_comparisons] who made each usable comparison
    unusable: int               # votes of the item that compare nothing


def fit_items(items: dict[str, list[PreferenceVote]], prior: float = 1.0, max_iter: int = 1000,
              tol: float = 1e-8) -> list[ItemFit]:
    """Bradley-Terry fits of the prompts' usable comparisons, one per prompt in `items`' order.

    Every prompt's comparisons go into flat arrays (its candidates numbered consecutively, in sorted id
    order) and all prompts are fitted by one `fit_grouped` call, one group per prompt: bit for bit what
    `bradley_terry` gives on each prompt alone, without a numpy call per prompt and MM iteration.
    """
    usable_votes, candidate_lists, winner, loser = [], [], [], []
    start = [0]
    for votes in items.values():
        usable = [vote for vote in votes if unusable_reason(vote) is None]
        candidates = sorted({vote.chosen for vote in usable} | {vote.rejected for vote in usable})
        position = {candidate: start[-1] + i for i, candidate in enumerate(candidates)}
        winner += [position[vote.chosen] for vote in usable]
        loser += [position[vote.rejected] for vote in usable]
        usable_votes.append(usable)
        candidate_lists.append(candidates)
        start.append(start[-1] + len(candidates))
    group = np.repeat(np.arange(len(candidate_lists)), np.diff(start))
    winner, loser = np.array(winner, dtype=np.int64), np.array(loser, dtype=np.int64)
    log_strength = fit_grouped(group, winner, loser, start[-1], prior=prior, max_iter=max_iter,
                               tol=tol).log_strength
    # Each prompt's ranking is a run of the grouped ranking: rounded strength desc, then smallest id.
    order = np.lexsort((np.arange(start[-1]), -np.round(log_strength, TIE_DECIMALS), group))
    fits, comparison = [], 0
    for (item_id, votes), usable, candidates, a, b in zip(items.items(), usable_votes, candidate_lists, start,
                                                          start[1:]):
        played = slice(comparison, comparison + len(usable))
        comparison += len(usable)
        fits.append(ItemFit(item_id, candidates, log_strength[a:b], order[a:b] - a, winner[played] - a,
                            loser[played] - a, [vote.annotator_id for vote in usable], len(votes) - len(usable)))
    return fits


def _beats(fit: ItemFit, a: int, b: int) -> float:
    """P(candidate a beats candidate b); exactly 0.5 when their rounded strengths tie."""
    key = np.round(fit.log_strength, TIE_DECIMALS)
    return 0.5 if key[a] == key[b] else float(win_probability(fit.log_strength, a, b))


class PreferenceFields(NamedTuple):
    label: str | None
    confidence: float
    num_votes: int
    agreement: float    # NaN below two comparisons
    is_tie: bool


def consensus_fields(fit: ItemFit) -> PreferenceFields:
    """The consensus row's values of one prompt; see the module docstring."""
    n = len(fit.winner)
    if not fit.candidates:
        return PreferenceFields(None, 0.0, 0, float("nan"), False)
    top, runner_up = int(fit.order[0]), int(fit.order[1])
    key = np.round(fit.log_strength, TIE_DECIMALS)
    rank = np.empty(len(fit.candidates), dtype=np.int64)
    rank[fit.order] = np.arange(len(fit.candidates))
    agreement = float(np.mean(rank[fit.winner] < rank[fit.loser])) if n >= 2 else float("nan")
    return PreferenceFields(fit.candidates[top], _beats(fit, top, runner_up), n, agreement,
                            bool(key[top] == key[runner_up]))


def comparison_decisions(fit: ItemFit) -> tuple[list[str], list[str], list[str], list[float], list[int]]:
    """Annotator-statistics rows of the prompt's comparisons (annotator_stats.decision_cells input):
    per comparison two rows, true HIGHER and true LOWER, answered HIGHER when the annotator chose the
    response ranked first of the pair; expected = P(that true answer), consensus 1 on HIGHER."""
    rank = np.empty(len(fit.candidates), dtype=np.int64)
    rank[fit.order] = np.arange(len(fit.candidates))
    annotators, true, answered, expected, consensus = [], [], [], [], []
    for annotator, w, loser in zip(fit.annotators, fit.winner.tolist(), fit.loser.tolist()):
        high, low = (w, loser) if rank[w] < rank[loser] else (loser, w)
        p_high = _beats(fit, high, low)
        answer = HIGHER if high == w else LOWER
        annotators += [annotator, annotator]
        true += [HIGHER, LOWER]
        answered += [answer, answer]
        expected += [p_high, 1.0 - p_high]
        consensus += [1, 0]
    return annotators, true, answered, expected, consensus


def _first_text(votes: list[PreferenceVote], response: str) -> str | None:
    for vote in votes:   # sorted by event_id
        if vote.chosen == response and vote.chosen_text:
            return vote.chosen_text
        if vote.rejected == response and vote.rejected_text:
            return vote.rejected_text
    return None


def export_record(fit: ItemFit, votes: list[PreferenceVote]) -> dict | None:
    """The DPO record of a prompt with >= 2 candidates (else None); `votes` sorted by event_id."""
    if len(fit.candidates) < 2:
        return None
    top, bottom = int(fit.order[0]), int(fit.order[-1])
    chosen, rejected = fit.candidates[top], fit.candidates[bottom]
    prompt = next((vote.prompt for vote in votes if vote.prompt), None)
    return {"item_id": fit.item_id, "prompt": prompt if prompt is not None else fit.item_id,
            "chosen": _first_text(votes, chosen) or chosen, "rejected": _first_text(votes, rejected) or rejected,
            "confidence": _beats(fit, top, bottom)}


def export_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=PREFERENCE_SCHEMA) if records else PREFERENCE_SCHEMA.empty_table()


def export_lines(tables: Iterable[pa.Table]) -> tuple[bytes, int]:
    """(the JSON Lines file's bytes, its rows): records sorted by item_id, deterministic bytes."""
    tables = list(tables)
    table = pa.concat_tables(tables).sort_by("item_id") if tables else PREFERENCE_SCHEMA.empty_table()
    lines = [json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n" for record in table.to_pylist()]
    return "".join(lines).encode("utf-8"), len(lines)
