"""`--method multilabel`: per-class binary majority of multi-label votes (pure core: multi_label.py)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.arrays.factorize import concatenated, factorize_sorted
from labelbeam.transforms.inference import multi_label
from labelbeam.transforms.inference.annotator_stats import PARTIAL_SCHEMA, decision_cells
from labelbeam.transforms.methods.base import (
    CONSENSUS_SCHEMA,
    BucketConsensus,
    MethodRequest,
    PerItemMethod,
    consensus_table,
    vote_status,
)


def _class_names(names: pa.ChunkedArray, suffix: str) -> pa.Array:
    return pc.binary_join_element_wise(names, pa.scalar(suffix), "=")


class MultiLabel(PerItemMethod):
    """Per-class binary majority of multi-label votes (transforms/inference/multi_label.py has the rules).

    Votes taking part: every vote except pure ratings (a score with no label and no labels). A vote's
    classes are its `labels` plus its `label` if set, so a single-label answer "cat" is the set {cat};
    a vote with neither says "none of them". Classes in question: the dataset's label set when given
    (`label_set`), else the classes some vote of the item named. A class is included iff its yes share
    is > 0.5; exactly 0.5 excludes it and makes the item's status `tie`. Row: `labels` = the included
    classes, sorted; `label` null; `confidence` = min over classes of max(share, 1 - share);
    `num_votes` = the multi-label votes; `agreement` = mean over classes of the per-class Fleiss P_i.
    Annotator statistics: every (vote, class) is a decision "<class>=yes"/"<class>=no" scored
    against the consensus decision (annotator_stats module docstring).
    """
    name = "multilabel"
    row_schema_file = "consensus_row.v2.avsc"
    supports_gold = False
    votes_taking_part = "votes other than pure ratings; classes = labels plus label"

    @classmethod
    def from_request(cls, request: MethodRequest) -> MultiLabel:
        cls.refuse_unused(request)
        return cls(min_votes=request.min_votes, label_set=request.label_set)

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None, label_set=None):
        super().__init__(min_votes, gold)
        self.label_set = tuple(sorted(set(label_set))) if label_set else None

    def params(self) -> dict:
        return {**super().params(), "classes": "label_set" if self.label_set else "named_on_item"}

    def consensus_of(self, votes: pa.Table) -> BucketConsensus:
        if votes.num_rows == 0:
            return BucketConsensus(CONSENSUS_SCHEMA.empty_table(), PARTIAL_SCHEMA.empty_table())
        item_idx, item_ids = factorize_sorted(votes.column("item_id"))
        label_column, labels_column = votes.column("label"), votes.column("labels")
        pure_rating = (pc.is_valid(votes.column("score")).to_numpy(zero_copy_only=False)
                       & pc.is_null(label_column).to_numpy(zero_copy_only=False)
                       & (pc.list_value_length(labels_column).to_numpy(zero_copy_only=False) == 0))
        taking_part = np.flatnonzero(~pure_rating)
        voted = votes.take(pa.array(taking_part))
        listed = voted.column("labels").combine_chunks()
        single = pc.is_valid(voted.column("label")).to_numpy(zero_copy_only=False)
        answer_vote = np.concatenate([pc.list_parent_indices(listed).to_numpy(zero_copy_only=False),
                                      np.flatnonzero(single)]).astype(np.int64)
        answer_names = concatenated([pc.list_flatten(listed), voted.column("label").filter(pa.array(single))],
                                    pa.string())
        known = pa.array(self.label_set or (), pa.string())
        class_idx, class_names = factorize_sorted(concatenated([answer_names, known], pa.string()))
        sparse = multi_label.MultiLabelVotes(item_idx[taking_part], answer_vote, class_idx[:len(answer_vote)],
                                             len(item_ids), len(class_names))
        result = multi_label.multi_label_consensus(sparse, all_classes=self.label_set is not None)
        included = np.flatnonzero(result.pair_included)
        offsets = np.zeros(len(item_ids) + 1, dtype=np.int32)
        np.cumsum(np.bincount(result.pair_item[included], minlength=len(item_ids)), out=offsets[1:])
        labels = pa.ListArray.from_arrays(pa.array(offsets), class_names.take(pa.array(result.pair_class[included])))
        rows = consensus_table(item_ids, None, result.confidence, result.num_votes, result.agreement,
                               vote_status(result.num_votes, self.min_votes, result.is_tie), labels=labels)
        return BucketConsensus(rows, self.decision_stats(voted, sparse, result, class_names))

    @staticmethod
    def decision_stats(voted: pa.Table, sparse: multi_label.MultiLabelVotes,
                       result: multi_label.MultiLabelConsensus, class_names: pa.Array) -> pa.Table:
        decided = multi_label.decisions(sparse, result)
        yes_names, no_names = _class_names(class_names, "yes"), _class_names(class_names, "no")
        pair_class = result.pair_class[decided.pair]
        classes = pa.array(pair_class, pa.int64())
        answered = pc.if_else(pa.array(decided.said_yes, pa.bool_()), yes_names.take(classes), no_names.take(classes))
        annotators = voted.column("annotator_id").take(pa.array(decided.vote))
        included = result.pair_included[decided.pair]
        share = result.pair_share[decided.pair]
        # Two rows per decision: the truth is yes (mass = share) or no (mass = 1 - share).
        return decision_cells(pa.concat_arrays([annotators.combine_chunks()] * 2),
                              pa.concat_arrays([yes_names.take(classes), no_names.take(classes)]),
                              pa.concat_arrays([answered, answered]),
                              np.concatenate([share, 1.0 - share]),
                              np.concatenate([included, ~included]).astype(np.int64))
