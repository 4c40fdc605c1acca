"""Every consensus method, by the name `--method` selects."""
from __future__ import annotations

from labelbeam.transforms.consensus import (ConsensusMethod, DawidSkene, Glad, Mace, MajorityVote, OneCoin,
                                            WeightedMajorityVote)
from labelbeam.transforms.multi_label_method import MultiLabel
from labelbeam.transforms.preference_method import BradleyTerry
from labelbeam.transforms.rating_methods import BiasCorrected, MeanScore, MedianScore

METHODS: dict[str, type[ConsensusMethod]] = {
    m.name: m for m in (MajorityVote, WeightedMajorityVote, DawidSkene, OneCoin, Glad, Mace, MultiLabel, MeanScore,
                        MedianScore, BiasCorrected, BradleyTerry)}
