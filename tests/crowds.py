"""Synthetic crowds built to mislead EM (shared by the degeneracy tests of both EM paths)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def crowd(seed: int, n_items: int = 600, n_labels: int = 2, per_item: int = 3, n_workers: int = 30,
          adversarial: float = 0.2, biased: float = 0.5):
    """Few votes per item from honest annotators, adversaries (who answer the next class) and annotators
    biased to class 0: the set-up that drives EM into switched or collapsed optima."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_labels, n_items)
    kind, accuracy = rng.random(n_workers), rng.uniform(0.5, 0.9, n_workers)
    rows = []
    for item in range(n_items):
        for worker in rng.choice(n_workers, per_item, replace=False):
            if kind[worker] < adversarial:
                label = (truth[item] + 1) % n_labels if rng.random() < 0.8 else rng.integers(n_labels)
            elif kind[worker] < adversarial + biased:
                label = 0 if rng.random() < 0.7 else (truth[item] if rng.random() < 0.5 else rng.integers(n_labels))
            else:
                label = truth[item] if rng.random() < accuracy[worker] else rng.integers(n_labels)
            rows.append((f"i{item:04d}", f"w{worker:02d}", f"c{label}"))
    return rows, truth


def votes_of(rows) -> pa.Table:
    items, workers, labels = zip(*rows)
    return pa.table({"item_id": list(items), "annotator_id": list(workers), "label": list(labels)})
