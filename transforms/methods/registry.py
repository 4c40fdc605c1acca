"""Every consensus method, by the name `--method` selects."""
from __future__ import annotations

from labelbeam.transforms.methods.base import ConsensusMethod
from labelbeam.transforms.methods.multi_label import MultiLabel
from labelbeam.transforms.methods.preferences import BradleyTerry
from labelbeam.transforms.methods.ratings import BiasCorrected, MeanScore, MedianScore
from labelbeam.transforms.methods.single_label import (
    DawidSkene,
    Glad,
    Mace,
    MajorityVote,
    OneCoin,
    WeightedMajorityVote,
)

METHODS: dict[str, type[ConsensusMethod]] = {
    m.name: m for m in (MajorityVote, WeightedMajorityVote, DawidSkene, OneCoin, Glad, Mace, MultiLabel, MeanScore,
                        MedianScore, BiasCorrected, BradleyTerry)}
