"""Is `confidence` a calibrated probability? Expected calibration error (ECE) on real gold labels.

    python benchmarks/calibration.py [--root DATASETS] [--datasets rte s_adult ...]

For every categorical dataset in ../shared/datasets (answers.csv + gold.csv), the gold items are
split in two halves at random (seed 0). For each half H, with the other half G used as `--gold`:
- `mv`: vote shares, as `--method mv` publishes them;
- `ds`: Dawid-Skene without gold (what `--method ds` publishes without --gold);
- `ds+gold`: Dawid-Skene with G clamped, then temperature-scaled on G (what `--method ds --gold G`
  publishes for non-gold items).
ECE and accuracy are measured on H only, which no method saw as gold; the table averages both
halves. Lower ECE is better (0 = confidence equals the hit rate in every bin of 10).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import consensus_accuracy as accuracy  # noqa: E402  (dataset loading and encoding)

from labelbeam.transforms.calibration import calibrated_dawid_skene, expected_calibration_error  # noqa: E402
from labelbeam.transforms.dawid_skene import dawid_skene, vote_shares  # noqa: E402


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def evaluate(encoded: accuracy.Encoded) -> dict[str, tuple[float, float]]:
    """method -> (mean ECE, mean accuracy) over the two held-out halves."""
    answers = encoded.answers
    scores: dict[str, list[tuple[float, float]]] = {"mv": [], "ds": [], "ds+gold": []}
    plain = {"mv": vote_shares(answers), "ds": dawid_skene(answers).posteriors}
    first, second = halves(len(encoded.gold_items))
    for known, held in ((first, second), (second, first)):
        gold = np.full(answers.n_items, -1)
        gold[encoded.gold_items[known]] = encoded.gold_classes[known]
        posteriors = {**plain, "ds+gold": calibrated_dawid_skene(answers, gold).posteriors}
        items, classes = encoded.gold_items[held], encoded.gold_classes[held]
        for method, values in posteriors.items():
            scores[method].append((expected_calibration_error(values[items], classes),
                                   float(np.mean(values[items].argmax(axis=1) == classes))))
    return {method: tuple(np.mean(pairs, axis=0)) for method, pairs in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=accuracy.default_root())
    parser.add_argument("--datasets", nargs="*")
    args = parser.parse_args(argv)
    print("| dataset | gold | mv ECE / acc | ds ECE / acc | ds+gold ECE / acc | temperature |")
    print("|---|---|---|---|---|---|")
    for folder in accuracy.dataset_folders(args.root, args.datasets):
        dataset = accuracy.load_dataset(folder)
        if dataset.kind != accuracy.CATEGORICAL:
            continue
        encoded = accuracy.encode(dataset)
        result = evaluate(encoded)
        gold = np.full(encoded.answers.n_items, -1)
        gold[encoded.gold_items] = encoded.gold_classes
        temperature = calibrated_dawid_skene(encoded.answers, gold).temperature
        cells = " | ".join(f"{ece:.3f} / {acc:.4f}" for ece, acc in result.values())
        print(f"| {folder.name} | {len(encoded.gold_items)} | {cells} | {temperature:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
