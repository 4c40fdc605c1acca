"""`--method bradley_terry`: pairwise preferences, ranked per prompt (pure core: preferences.py,
bradley_terry.py), with the prompt/chosen/rejected export."""
from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow as pa

from labelbeam.transforms.inference import preferences
from labelbeam.transforms.inference.annotator_stats import decision_cells
from labelbeam.transforms.methods.base import PerItemMethod, consensus_table, vote_status


class PreferenceConsensus(NamedTuple):
    labels: pa.Table            # CONSENSUS_SCHEMA
    annotator_stats: pa.Table   # PARTIAL_SCHEMA
    preferences: pa.Table       # preferences.PREFERENCE_SCHEMA: the DPO export records



class BradleyTerry(PerItemMethod):
    """Bradley-Terry strengths of each prompt's responses from pairwise preference votes.

    Encoding, unusable votes, ranking, tie and confidence rules: transforms/inference/preferences.py. Each prompt
    is fitted alone (responses of different prompts are never compared), all prompts of a bucket in one
    grouped fit (`preferences.fit_items`). Besides the rows, emits the prompt/chosen/rejected export records
    (PREFERENCES), which PublishVersion writes as preferences-00000-of-00001.jsonl.
    """
    name = "bradley_terry"
    result_type = PreferenceConsensus
    supports_gold = False
    votes_taking_part = "usable comparisons: label (chosen) and metadata.rejected naming another response"
    prior: ClassVar[float] = 1.0
    max_iter: ClassVar[int] = 1000
    tol: ClassVar[float] = 1e-8

    def params(self) -> dict:
        return {**super().params(), "prior": self.prior, "max_iter": self.max_iter, "tol": self.tol,
                "tie_decimals": preferences.TIE_DECIMALS}

    def consensus_of(self, votes: pa.Table) -> PreferenceConsensus:
        items = preferences.votes_by_item(votes)
        return self.consensus_of_fits(zip(preferences.fit_items(items, self.prior, self.max_iter, self.tol),
                                          items.values()))

    def consensus_of_fits(self, fits: Iterable[tuple[preferences.ItemFit, list]]) -> PreferenceConsensus:
        """Rows, annotator statistics and export records of (prompt fit, that prompt's votes) pairs."""
        item_ids, labels, confidence, num_votes, agreement, is_tie = [], [], [], [], [], []
        annotators, true, answered, expected, consensus, records = [], [], [], [], [], []
        for fit, item_votes in fits:
            fields = preferences.consensus_fields(fit)
            item_ids.append(fit.item_id)
            labels.append(fields.label)
            confidence.append(fields.confidence)
            num_votes.append(fields.num_votes)
            agreement.append(fields.agreement)
            is_tie.append(fields.is_tie)
            for collected, part in zip((annotators, true, answered, expected, consensus),
                                       preferences.comparison_decisions(fit)):
                collected += part
            record = preferences.export_record(fit, item_votes)
            if record is not None:
                records.append(record)
        num_votes_array = np.array(num_votes, dtype=np.int64)
        rows = consensus_table(pa.array(item_ids, pa.string()), pa.array(labels, pa.string()),
                               np.array(confidence, dtype=np.float64), num_votes_array,
                               np.array(agreement, dtype=np.float64),
                               vote_status(num_votes_array, self.min_votes, np.array(is_tie, dtype=bool)))
        stats = decision_cells(pa.array(annotators, pa.string()), pa.array(true, pa.string()),
                               pa.array(answered, pa.string()), np.array(expected, dtype=np.float64),
                               np.array(consensus, dtype=np.int64))
        return PreferenceConsensus(rows, stats, preferences.export_table(records))
