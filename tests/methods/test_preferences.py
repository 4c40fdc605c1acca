"""Pairwise preferences: usable comparisons, per-prompt Bradley-Terry rows, DPO export records and bytes,
and the `bradley_terry` method on event tables."""
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from event_builders import event, event_table

from labelbeam.transforms.inference import preferences
from labelbeam.transforms.inference.annotator_stats import summarize_annotators
from labelbeam.transforms.inference.bradley_terry import bradley_terry, win_probability
from labelbeam.transforms.inference.preferences import (
    TIE_DECIMALS,
    ItemFit,
    PreferenceVote,
    consensus_fields,
    export_lines,
    export_record,
    export_table,
    fit_items,
    unusable_reason,
    votes_by_item,
)
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA
from labelbeam.transforms.methods.preferences import BradleyTerry
from labelbeam.transforms.methods.registry import METHODS


def vote(event_id, chosen, rejected, annotator="a", prompt=None, chosen_text=None, rejected_text=None):
    return PreferenceVote(event_id, annotator, chosen, rejected, prompt, chosen_text, rejected_text)


def fit_item(item_id, votes):
    """One prompt's fit (the method fits a bucket's prompts together: fit_items)."""
    [fit] = fit_items({item_id: votes})
    return fit


def pref(event_id, item, annotator, chosen, rejected=None, **texts):
    metadata = dict(texts)
    if rejected is not None:
        metadata["rejected"] = rejected
    return event(event_id, item=item, annotator=annotator, label=chosen, metadata=metadata)


def test_unusable_votes_are_named():
    assert unusable_reason(vote("e", "r1", "r2")) is None
    assert unusable_reason(vote("e", "r1", None)) == "no metadata.rejected"
    assert unusable_reason(vote("e", "r1", "r1")) == "metadata.rejected equals label"
    assert unusable_reason(vote("e", None, "r1")) == "no label (the chosen response)"


def test_row_of_a_prompt_matches_a_direct_fit():
    votes = [vote("e1", "r1", "r2"), vote("e2", "r1", "r3"), vote("e3", "r2", "r3"), vote("e4", "r3", "r1"),
             vote("e5", "r1", None)]
    fit = fit_item("p", votes)
    assert fit.candidates == ["r1", "r2", "r3"] and fit.unusable == 1
    direct = bradley_terry(np.array([0, 0, 1, 2]), np.array([1, 2, 2, 0]), 3).log_strength
    np.testing.assert_allclose(fit.log_strength, direct)
    assert fit.order.tolist() == [0, 1, 2]
    fields = consensus_fields(fit)
    assert fields.label == "r1" and fields.num_votes == 4 and not fields.is_tie
    assert fields.confidence == pytest.approx(float(win_probability(direct, 0, 1)))
    assert 0.5 < fields.confidence < 1
    assert fields.agreement == 0.75   # r3 over r1 goes against the ranking


def test_symmetric_preferences_tie_and_the_smallest_id_wins():
    fields = consensus_fields(fit_item("p", [vote("e1", "b", "a"), vote("e2", "a", "b")]))
    assert (fields.label, fields.confidence, fields.is_tie, fields.agreement) == ("a", 0.5, True, 0.5)


def test_a_prompt_without_usable_comparisons_has_no_label():
    fit = fit_item("p", [vote("e1", "r1", "r1"), vote("e2", "r1", None)])
    fields = consensus_fields(fit)
    assert fit.candidates == [] and fit.unusable == 2
    assert (fields.label, fields.confidence, fields.num_votes) == (None, 0.0, 0) and math.isnan(fields.agreement)
    assert export_record(fit, []) is None


def test_one_comparison_has_no_agreement_but_a_confidence_above_one_half():
    fields = consensus_fields(fit_item("p", [vote("e1", "good", "bad")]))
    assert fields.label == "good" and math.isnan(fields.agreement) and 0.5 < fields.confidence < 1


def test_export_record_takes_top_and_bottom_with_texts_of_the_earliest_vote():
    votes = sorted([
        vote("e2", "r1", "r3", prompt="Later prompt", chosen_text="R1 later"),
        vote("e1", "r1", "r2", prompt="Say hi", chosen_text="Hi!", rejected_text="Hey"),
        vote("e3", "r2", "r3", rejected_text="Go away"),
    ])
    fit = fit_item("p1", votes)
    record = export_record(fit, votes)
    assert record == {"item_id": "p1", "prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away",
                      "confidence": pytest.approx(float(win_probability(fit.log_strength, 0, 2)))}
    # Without texts the ids stand in.
    bare = [vote("e1", "x", "y")]
    assert export_record(fit_item("p2", bare), bare) == {
        "item_id": "p2", "prompt": "p2", "chosen": "x", "rejected": "y",
        "confidence": pytest.approx(float(win_probability(fit_item("p2", bare).log_strength, 0, 1)))}


def test_export_lines_are_sorted_deterministic_json():
    records = [{"item_id": "p2", "prompt": "Grüße", "chosen": "a", "rejected": "b", "confidence": 0.75},
               {"item_id": "p1", "prompt": "q", "chosen": "c\nd", "rejected": "e", "confidence": 0.5}]
    data, rows = export_lines([export_table(records[:1]), export_table(records[1:])])
    again, _ = export_lines([export_table(records[1:]), export_table(records[:1])])
    assert data == again and rows == 2
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert lines[0] == '{"chosen": "c\\nd", "confidence": 0.5, "item_id": "p1", "prompt": "q", "rejected": "e"}'
    assert "Grüße" in lines[1]                       # ensure_ascii=False
    assert [json.loads(line) for line in lines[:2]] == [records[1], records[0]]
    assert export_lines([]) == (b"", 0)


def test_votes_by_item_reads_metadata_and_sorts_by_event_id():
    table = event_table([pref("e2", "p1", "a2", "r2", "r1"), pref("e1", "p1", "a1", "r1", "r2", prompt="P"),
                         pref("e3", "p0", "a1", "x")])
    grouped = votes_by_item(table)
    assert list(grouped) == ["p0", "p1"]
    assert [v.event_id for v in grouped["p1"]] == ["e1", "e2"]
    assert grouped["p1"][0] == PreferenceVote("e1", "a1", "r1", "r2", "P", None, None)
    assert grouped["p0"][0].rejected is None


def test_bradley_terry_method_rows_export_and_annotator_stats():
    table = event_table([
        pref("e1", "p1", "a1", "r1", "r2", prompt="Say hi", chosen_text="Hi!", rejected_text="Go away"),
        pref("e2", "p1", "a2", "r1", "r2"),
        pref("e3", "p1", "a3", "r2", "r1"),
        pref("e4", "p1", "a4", "r1"),            # no rejected: unusable
        pref("e5", "p2", "a1", "x", "x"),        # rejected == label: unusable
    ])
    method = METHODS["bradley_terry"](min_votes=2)
    parts = method.consensus_of(table)
    assert parts.labels.schema == CONSENSUS_SCHEMA
    rows = {row["item_id"]: row for row in parts.labels.to_pylist()}
    assert rows["p1"]["label"] == "r1" and rows["p1"]["num_votes"] == 3 and rows["p1"]["status"] == "ok"
    assert rows["p1"]["agreement"] == pytest.approx(2 / 3) and 0.5 < rows["p1"]["confidence"] < 1
    assert rows["p1"]["labels"] == [] and rows["p1"]["score"] is None
    assert rows["p2"]["label"] is None and rows["p2"]["num_votes"] == 0 and rows["p2"]["status"] == "needs_more_votes"
    assert parts.preferences.to_pylist() == [{"item_id": "p1", "prompt": "Say hi", "chosen": "Hi!",
                                              "rejected": "Go away", "confidence": rows["p1"]["confidence"]}]
    assert method.aggregate(table).equals(parts.labels)
    stats, classes = summarize_annotators([parts.annotator_stats], lambda annotator: annotator)
    assert classes == ["preferred=higher_ranked", "preferred=lower_ranked"]
    by_annotator = {row["annotator"]: row for row in stats.to_pylist()}
    assert set(by_annotator) == {"a1", "a2", "a3"}          # only usable comparisons are answers
    assert by_annotator["a1"]["agreement"] == 1.0 and by_annotator["a3"]["agreement"] == 0.0
    assert by_annotator["a3"]["accuracy"] == pytest.approx(1 - rows["p1"]["confidence"])


def test_bradley_terry_rows_do_not_depend_on_which_prompts_share_a_bucket():
    rng = np.random.default_rng(5)
    events = []
    for p in range(6):
        for k in range(5):
            a, b = rng.choice(["r1", "r2", "r3", "r4"], 2, replace=False)
            events.append(pref(f"e{p}-{k}", f"p{p}", f"a{k}", str(a), str(b)))
    table = event_table(events)
    method = BradleyTerry()
    whole = method.aggregate(table)
    items = table.column("item_id").to_pylist()
    split = pa.concat_tables([method.aggregate(table.filter(pa.array([i in {"p0", "p3"} for i in items]))),
                              method.aggregate(table.filter(pa.array([i not in {"p0", "p3"} for i in items])))])
    assert split.sort_by("item_id").equals(whole)


def per_prompt_fits(items, prior=1.0, max_iter=1000, tol=1e-8):
    """The fits as the method made them before the grouped fit: one `bradley_terry` call per prompt."""
    fits = []
    for item_id, votes in items.items():
        usable = [vote for vote in votes if unusable_reason(vote) is None]
        candidates = sorted({vote.chosen for vote in usable} | {vote.rejected for vote in usable})
        position = {candidate: i for i, candidate in enumerate(candidates)}
        winner = np.array([position[vote.chosen] for vote in usable], dtype=np.int64)
        loser = np.array([position[vote.rejected] for vote in usable], dtype=np.int64)
        log_strength = bradley_terry(winner, loser, len(candidates), prior=prior, max_iter=max_iter,
                                     tol=tol).log_strength
        order = np.lexsort((np.arange(len(candidates)), -np.round(log_strength, TIE_DECIMALS)))
        fits.append(ItemFit(item_id, candidates, log_strength, order, winner, loser,
                            [vote.annotator_id for vote in usable], len(votes) - len(usable)))
    return fits


def random_preference_events(seed: int) -> list[dict]:
    """Preference votes of many prompts: first the awkward ones (a two-way tie, a 3-cycle, two pairs
    never compared with each other, only unusable votes, a single comparison), then random prompts of
    2-9 responses, some pairs never compared, about one vote in ten unusable, texts on some votes."""
    rng = np.random.default_rng(seed)
    fixed = {"tie": [("a", "b"), ("b", "a")], "cycle": [("r1", "r2"), ("r2", "r3"), ("r3", "r1")],
             "apart": [("r1", "r2"), ("r3", "r4"), ("r1", "r2")], "unusable": [("x", None), ("x", "x")],
             "one": [("good", "bad")]}
    prompts = {f"{seed}-{name}": votes for name, votes in fixed.items()}
    for p in range(int(rng.integers(8, 16))):
        responses = [f"resp-{rng.integers(0, 40)}-{j}" for j in range(int(rng.integers(2, 10)))]
        strength = rng.normal(0, 1.5, len(responses))
        pairs = [tuple(rng.choice(len(responses), 2, replace=False)) for _ in range(int(rng.integers(1, 8)))]
        votes = []
        for _ in range(int(rng.integers(1, 16))):
            i, j = pairs[rng.integers(len(pairs))]   # only these pairs are compared: often not all
            i, j = (i, j) if rng.random() < 1 / (1 + np.exp(strength[j] - strength[i])) else (j, i)
            roll = rng.random()
            votes.append((responses[i], None if roll < 0.05 else responses[i] if roll < 0.1 else responses[j]))
        prompts[f"{rng.integers(0, 1000)}-p{p}"] = votes
    events = []
    for item, votes in prompts.items():
        for k, (chosen, rejected) in enumerate(votes):
            texts = {key: f"{key} {item} {k}" for key in ("prompt", "chosen_text", "rejected_text")
                     if rng.random() < 0.3}
            events.append(pref(f"e-{item}-{k:02d}", item, f"a{k}", chosen, rejected, **texts))
    return [events[i] for i in rng.permutation(len(events))]


@pytest.mark.parametrize("seed", range(6))
def test_method_output_equals_the_per_prompt_reference_bit_for_bit(seed, monkeypatch):
    table = event_table(random_preference_events(seed))
    items = votes_by_item(table)
    for grouped, alone in zip(fit_items(items), per_prompt_fits(items), strict=True):
        assert (grouped.item_id, grouped.candidates, grouped.annotators, grouped.unusable) == \
            (alone.item_id, alone.candidates, alone.annotators, alone.unusable)
        assert grouped.log_strength.tobytes() == alone.log_strength.tobytes()
        for got, expected in zip(grouped[3:6], alone[3:6]):   # order, winner, loser
            assert got.dtype == expected.dtype and np.array_equal(got, expected)
    method = BradleyTerry(min_votes=2)
    parts = method.consensus_of(table)
    calls = []

    def reference(items, *options):
        calls.append(len(items))
        return per_prompt_fits(items, *options)

    monkeypatch.setattr(preferences, "fit_items", reference)
    expected = method.consensus_of(table)
    assert calls == [len(items)]   # the method fitted through the reference, all its prompts
    for got, want in zip(parts, expected, strict=True):   # rows, annotator statistics, DPO export
        assert got.schema == want.schema and got.equals(want)
    assert set(parts.labels.column("status").to_pylist()) == {"ok", "tie", "needs_more_votes"}
