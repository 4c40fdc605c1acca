"""Is `confidence` a calibrated probability? Expected calibration error (ECE) on real gold labels.

    python benchmarks/calibration.py [--root DATASETS] [--datasets rte s_adult ...]

For every categorical dataset in ../shared/datasets (answers.csv + gold.csv), the gold items are
split in two halves at random (seed 0). For each half H, with the other half G used as `--gold`:
- `mv`: vote shares, as `--method mv` publishes them;
- `ds`, `one_coin`, `glad`, `mace`: the model without gold (what `--method M` publishes);
- `M+gold`: the model with G clamped, then temperature-scaled on G (what `--method M --gold G`
  publishes for non-gold items), through the build's own method classes.
ECE and accuracy are measured on H only, which no method saw as gold; the table averages both
halves. Lower ECE is better (0 = confidence equals the hit rate in every bin of 10).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import consensus_accuracy as accuracy  # noqa: E402  (dataset loading and encoding)

from labelbeam.transforms.inference.calibration import expected_calibration_error  # noqa: E402
from labelbeam.transforms.inference.em import Answers, vote_shares  # noqa: E402
from labelbeam.transforms.methods.single_label import DawidSkene, Glad, Mace, OneCoin  # noqa: E402


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


class Indexed(NamedTuple):
    """What AnnotatorModelMethod.posteriors reads of the build's indexed votes."""
    answers: Answers
    gold: np.ndarray | None


def evaluate(encoded: accuracy.Encoded, models: dict) -> dict[str, tuple[float, float]]:
    """method -> (mean ECE, mean accuracy) over the two held-out halves."""
    answers = encoded.answers
    plain = {"mv": vote_shares(answers)}
    plain.update({name: model.posteriors(Indexed(answers, None)) for name, model in models.items()})
    scores: dict[str, list[tuple[float, float]]] = {}
    first, second = halves(len(encoded.gold_items))
    for known, held in ((first, second), (second, first)):
        gold = np.full(answers.n_items, -1)
        gold[encoded.gold_items[known]] = encoded.gold_classes[known]
        posteriors = dict(plain)
        posteriors.update({f"{name}+gold": model.posteriors(Indexed(answers, gold)) for name, model in models.items()})
        items, classes = encoded.gold_items[held], encoded.gold_classes[held]
        for method, values in posteriors.items():
            scores.setdefault(method, []).append((expected_calibration_error(values[items], classes),
                                                  float(np.mean(values[items].argmax(axis=1) == classes))))
    return {method: tuple(np.mean(pairs, axis=0)) for method, pairs in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=accuracy.default_root())
    parser.add_argument("--datasets", nargs="*")
    args = parser.parse_args(argv)
    models = {model.name: model() for model in (DawidSkene, OneCoin, Glad, Mace)}
    columns = ["mv", *[f"{name}{suffix}" for name in models for suffix in ("", "+gold")]]
    print("ECE / accuracy on held-out gold (lower ECE is better)\n")
    print("| dataset | gold | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for folder in accuracy.dataset_folders(args.root, args.datasets):
        dataset = accuracy.load_dataset(folder)
        if dataset.kind != accuracy.CATEGORICAL:
            continue
        encoded = accuracy.encode(dataset)
        result = evaluate(encoded, models)
        cells = " | ".join(f"{result[column][0]:.3f} / {result[column][1]:.4f}" for column in columns)
        print(f"| {folder.name} | {len(encoded.gold_items)} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
