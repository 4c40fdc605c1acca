"""A version's agreement from per-bucket partials: the published worked examples, whatever the bucketing."""
import random

import pyarrow as pa
import pytest
from test_agreement import FLEISS_WIKIPEDIA, KRIPPENDORFF_2011

from labelbeam.transforms.inference.version_agreement import agreement_partial, version_agreement


def votes_table(matrix, as_scores=False) -> pa.Table:
    """Standing votes of an observers x units matrix; values as label names ("v1".."v5") or as scores."""
    rows = [(f"unit-{unit:02d}", f"observer-{observer}", value) for observer, row in enumerate(matrix)
            for unit, value in enumerate(row) if value is not None]
    items, observers = [item for item, _, _ in rows], [observer for _, observer, _ in rows]
    if as_scores:
        return pa.table({"item_id": items, "annotator_id": observers, "label": pa.nulls(len(rows), pa.string()),
                         "score": pa.array([float(value) for _, _, value in rows])})
    return pa.table({"item_id": items, "annotator_id": observers, "label": [f"v{value}" for _, _, value in rows],
                     "score": pa.nulls(len(rows), pa.float64())})


def fleiss_votes() -> pa.Table:
    rows = [(f"subject-{subject}", f"c{category}") for subject, cells in enumerate(FLEISS_WIKIPEDIA)
            for category, raters in enumerate(cells) for _ in range(raters)]
    raters = [f"rater-{index % 14}" for index in range(len(rows))]  # 14 per subject, rows grouped by subject
    return pa.table({"item_id": [item for item, _ in rows], "annotator_id": raters,
                     "label": [label for _, label in rows], "score": pa.nulls(len(rows), pa.float64())})


def buckets(table: pa.Table, count: int, seed: int) -> list[pa.Table]:
    """The table's items split at random into `count` buckets (every vote of an item in one), rows shuffled."""
    rng = random.Random(seed)
    items = sorted(set(table.column("item_id").to_pylist()))
    bucket_of = {item: rng.randrange(count) for item in items}
    rows = table.to_pylist()
    rng.shuffle(rows)
    return [pa.Table.from_pylist([row for row in rows if bucket_of[row["item_id"]] == bucket], schema=table.schema)
            for bucket in range(count)]


@pytest.mark.parametrize("count", [1, 3, 7])
def test_krippendorffs_example_gives_its_published_alphas_in_any_bucketing(count):
    nominal = version_agreement(agreement_partial(part) for part in buckets(votes_table(KRIPPENDORFF_2011), count, 1))
    interval = version_agreement(agreement_partial(part) for part in
                                 buckets(votes_table(KRIPPENDORFF_2011, as_scores=True), count, 2))
    assert round(nominal["krippendorff_alpha"], 3) == 0.743   # Krippendorff (2011)
    assert nominal["pairable_votes"] == 40
    assert round(interval["krippendorff_alpha_interval"], 3) == 0.849
    assert nominal["fleiss_kappa"] is None and "same number of votes" in nominal["fleiss_kappa_undefined"]
    whole = version_agreement([agreement_partial(votes_table(KRIPPENDORFF_2011))])
    assert nominal == whole  # the same bits, however the items were bucketed


@pytest.mark.parametrize("count", [1, 4])
def test_fleiss_worked_example_gives_kappa_0_210(count):
    result = version_agreement(agreement_partial(part) for part in buckets(fleiss_votes(), count, 3))
    assert round(result["fleiss_kappa"], 3) == 0.210   # Fleiss (1971), as worked on Wikipedia
    assert result["fleiss_kappa_undefined"] is None
    assert result["krippendorff_alpha_interval"] is None  # no scores


def test_entropy_mean_is_over_items_and_a_bucket_without_some_labels_aligns_by_name():
    left = pa.table({"item_id": ["a", "a", "b", "b"], "annotator_id": ["x", "y", "x", "y"],
                     "label": ["cat", "dog", "cat", "cat"], "score": pa.nulls(4, pa.float64())})
    right = pa.table({"item_id": ["c", "c"], "annotator_id": ["x", "y"], "label": ["fish", "fish"],
                      "score": pa.nulls(2, pa.float64())})
    result = version_agreement([agreement_partial(left), agreement_partial(right)])
    assert result["vote_entropy_bits_mean"] == round((1.0 + 0.0 + 0.0) / 3, 6)
    # cat/dog/fish over three items of two votes: only item a disagrees.
    assert result["fleiss_kappa"] is not None and result["krippendorff_alpha"] > 0


def test_each_annotators_pairwise_agreement_counts_the_other_votes_on_their_items():
    from labelbeam.transforms.inference.version_agreement import sum_annotator_pairs
    votes = pa.table({"item_id": ["a", "a", "a", "b", "b", "c"], "annotator_id": ["x", "y", "z", "x", "y", "z"],
                      "label": ["cat", "cat", "dog", "dog", "cat", "cat"], "score": pa.nulls(6, pa.float64())})
    whole = agreement_partial(votes).annotator_pairs.to_pylist()
    # x: on a, y agrees and z does not; on b, y does not. z: on a, nobody agrees; c has no other vote.
    assert whole == [{"annotator_id": "x", "pairs": 3, "agreed_pairs": 1},
                     {"annotator_id": "y", "pairs": 3, "agreed_pairs": 1},
                     {"annotator_id": "z", "pairs": 2, "agreed_pairs": 0}]
    split = [agreement_partial(part).annotator_pairs for part in (votes.slice(0, 3), votes.slice(3))]
    assert sum_annotator_pairs(split).to_pylist() == whole  # additive over item buckets
