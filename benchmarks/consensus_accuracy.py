"""Consensus accuracy: labelbeam's truth-inference cores vs crowd-kit on real crowdsourced data.

For every dataset folder under ``--root`` (``answers.csv``: task,worker,label; ``gold.csv``:
task,label; ``SOURCE.json`` with ``"kind"``), runs our pure numpy cores (no Beam) and crowd-kit's
aggregators in the same process and prints one table per kind:

- categorical: accuracy on the gold tasks (share of gold tasks whose predicted label equals gold);
- numeric: mean absolute error of the per-task estimate vs gold.

Best per row is marked with ``*``. A method that raises is reported as ``crashed: <reason>`` and the
run goes on; an optional core that cannot be imported is reported as ``n/a``. Nothing here fails the
run on accuracy; the exit code is 1 only if a dataset cannot be read.

    /work/venv/bin/python benchmarks/consensus_accuracy.py
    /work/venv/bin/python benchmarks/consensus_accuracy.py --datasets rte temp wsd
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelbeam.transforms.inference.dawid_skene import dawid_skene
from labelbeam.transforms.inference.em import Answers, vote_shares
from labelbeam.transforms.inference.ratings import Ratings, bias_corrected_scores, mean_scores, median_scores

REPO_ROOT = Path(__file__).resolve().parents[1]
FALLBACK_ROOT = Path("/work/shared/datasets")
CATEGORICAL = "categorical"
NUMERIC = "numeric"
MAX_REASON = 90

# Optional cores another change adds: (column name, module, function). Same Answers input, result
# with `.posteriors` [n_items, n_labels].
OPTIONAL_CORES = (
    ("ours one_coin", "labelbeam.transforms.inference.one_coin", "one_coin"),
    ("ours glad", "labelbeam.transforms.inference.glad", "glad"),
    ("ours mace", "labelbeam.transforms.inference.mace", "mace"),
)

# crowd-kit categorical aggregators, constructed with their defaults: (column name, class name).
CROWDKIT_CATEGORICAL = (
    ("ck MajorityVote", "MajorityVote"),
    ("ck DawidSkene", "DawidSkene"),
    ("ck OneCoinDawidSkene", "OneCoinDawidSkene"),
    ("ck GLAD", "GLAD"),
    ("ck MACE", "MACE"),
)
OUR_DS = "ours ds"
CROWDKIT_DS = "ck DawidSkene"
NUMERIC_NOTE = ("crowd-kit: categorical methods skipped on numeric data; crowd-kit 1.4.2 has no "
                "scalar numeric aggregator (RASA/HRRASA/ClosestToAverage return the answer whose "
                "embedding is closest by cosine distance, which is degenerate for 1-D values)")

Posteriors = Callable[[Answers], np.ndarray]


@dataclass(frozen=True)
class Core:
    """One of our methods; `run` is None when it is not available (then `note` says why)."""
    method: str
    run: Posteriors | None
    note: str = "n/a"


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str
    answers: pd.DataFrame   # task, worker, label (strings)
    gold: pd.DataFrame      # task, label (strings)


@dataclass(frozen=True)
class Cell:
    """One method on one dataset: a score (accuracy or MAE), or a note saying why there is none."""
    method: str
    score: float | None = None
    seconds: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class Encoded:
    """A categorical dataset in our input format, with the gold tasks as (item index, class index)."""
    answers: Answers
    gold_items: np.ndarray
    gold_classes: np.ndarray


# ---------------------------------------------------------------------------------------------
# Input


def default_root() -> Path:
    """../shared/datasets from the repository root, else /work/shared/datasets."""
    candidate = (REPO_ROOT / ".." / "shared" / "datasets").resolve()
    return candidate if candidate.is_dir() else FALLBACK_ROOT


def read_strings(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV with the given columns, every value kept as the exact string in the file."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return frame[list(columns)].astype(object)


def load_dataset(folder: Path) -> Dataset:
    source = json.loads((folder / "SOURCE.json").read_text(encoding="utf-8"))
    kind = source.get("kind")
    if kind not in (CATEGORICAL, NUMERIC):
        raise ValueError(f"{folder / 'SOURCE.json'}: unknown kind {kind!r}")
    answers = read_strings(folder / "answers.csv", ("task", "worker", "label"))
    gold = read_strings(folder / "gold.csv", ("task", "label"))
    return Dataset(folder.name, kind, answers, gold)


def dataset_folders(root: Path, names: Sequence[str] | None) -> list[Path]:
    """The chosen dataset folders (all folders with a SOURCE.json when `names` is empty)."""
    if names:
        return [root / name for name in names]
    return sorted(path.parent for path in root.glob("*/SOURCE.json"))


def encode(dataset: Dataset) -> Encoded:
    """Items, workers and labels factorized in sorted string order; gold labels join the label set."""
    items = np.array(sorted(set(dataset.answers["task"])), dtype=object)
    workers = np.array(sorted(set(dataset.answers["worker"])), dtype=object)
    labels = np.array(sorted(set(dataset.answers["label"]) | set(dataset.gold["label"])), dtype=object)
    gold_tasks = dataset.gold["task"].to_numpy(dtype=object)
    unknown = sorted(set(gold_tasks) - set(items))
    if unknown:
        raise ValueError(f"{dataset.name}: {len(unknown)} gold tasks have no answers, e.g. {unknown[0]!r}")
    answers = Answers(
        item=np.searchsorted(items, dataset.answers["task"].to_numpy(dtype=object)),
        worker=np.searchsorted(workers, dataset.answers["worker"].to_numpy(dtype=object)),
        label=np.searchsorted(labels, dataset.answers["label"].to_numpy(dtype=object)),
        n_items=len(items), n_workers=len(workers), n_labels=len(labels),
    )
    return Encoded(answers, np.searchsorted(items, gold_tasks),
                   np.searchsorted(labels, dataset.gold["label"].to_numpy(dtype=object)))


# ---------------------------------------------------------------------------------------------
# Running methods


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


def timed_cell(method: str, run: Callable[[], Any], score: Callable[[Any], float]) -> Cell:
    """Time `run()` alone, then score its result; any exception becomes a "crashed" cell."""
    try:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        return Cell(method, score(result), seconds)
    except Exception as exc:  # noqa: BLE001 - a crashing method is a result, not a failure
        return Cell(method, note=f"crashed: {one_line(exc)}")


def most_frequent_class(answers: Answers) -> np.ndarray:
    """Every item gets the class the crowd answered most often overall: the floor no model should fall below."""
    posteriors = np.zeros((answers.n_items, answers.n_labels))
    posteriors[:, np.bincount(answers.label, minlength=answers.n_labels).argmax()] = 1.0
    return posteriors


def our_cores() -> list[Core]:
    """The most-frequent-class floor, our majority vote and Dawid-Skene, plus whichever optional cores
    can be imported."""
    cores = [Core("most frequent class", most_frequent_class), Core("ours mv", vote_shares),
             Core(OUR_DS, lambda answers: dawid_skene(answers).posteriors)]
    return cores + [optional_core(*spec) for spec in OPTIONAL_CORES]


def optional_core(method: str, module_name: str, function_name: str) -> Core:
    """The core, "n/a" if its module or function does not exist, "n/a (import ...)" if importing fails."""
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except ModuleNotFoundError as exc:
        return Core(method, None, "n/a" if exc.name == module_name else f"n/a (import {one_line(exc)})")
    except AttributeError:
        return Core(method, None)
    except Exception as exc:  # noqa: BLE001 - e.g. a half-written module: report it, keep going
        return Core(method, None, f"n/a (import {one_line(exc)})")
    return Core(method, lambda answers: function(answers).posteriors)


def accuracy_of_posteriors(encoded: Encoded) -> Callable[[np.ndarray], float]:
    def score(posteriors: np.ndarray) -> float:
        posteriors = np.asarray(posteriors)
        expected = (encoded.answers.n_items, encoded.answers.n_labels)
        if posteriors.shape != expected:
            raise ValueError(f"posteriors shape {posteriors.shape}, expected {expected}")
        predicted = posteriors.argmax(axis=1)   # ties: smallest class index
        return float(np.mean(predicted[encoded.gold_items] == encoded.gold_classes))
    return score


def run_ours(encoded: Encoded, cores: Sequence[Core]) -> list[Cell]:
    score = accuracy_of_posteriors(encoded)
    cells = []
    for core in cores:
        if core.run is None:
            cells.append(Cell(core.method, note=core.note))
        else:
            cells.append(timed_cell(core.method, functools.partial(core.run, encoded.answers), score))
    return cells


def crowdkit_class(class_name: str) -> type | None:
    try:
        aggregation = importlib.import_module("crowdkit.aggregation")
    except ImportError:
        return None
    return getattr(aggregation, class_name, None)


def fit_predict(aggregator: type, answers: pd.DataFrame) -> pd.Series:
    """A fresh crowd-kit aggregator with default parameters, fitted on a copy of `answers`."""
    return aggregator().fit_predict(answers.copy())   # copy: crowd-kit may add columns


def accuracy_of_predictions(gold: pd.DataFrame) -> Callable[[pd.Series], float]:
    def score(predicted: pd.Series) -> float:
        aligned = predicted.reindex(gold["task"].to_numpy())   # a task without a prediction is wrong
        return float(np.mean(aligned.to_numpy(dtype=object) == gold["label"].to_numpy(dtype=object)))
    return score


def run_crowdkit(dataset: Dataset) -> list[Cell]:
    score = accuracy_of_predictions(dataset.gold)
    cells = []
    for method, class_name in CROWDKIT_CATEGORICAL:
        aggregator = crowdkit_class(class_name)
        if aggregator is None:
            cells.append(Cell(method, note="n/a"))
        else:
            run = functools.partial(fit_predict, aggregator, dataset.answers)
            cells.append(timed_cell(method, run, score))
    return cells


def run_numeric(dataset: Dataset) -> list[Cell]:
    """MAE vs gold of the per-task estimates: our ratings cores (mean, median, bias-corrected robust mean,
    all with their documented defaults), plus pandas' groupby mean and median as an independent check."""
    answers = pd.DataFrame({"task": dataset.answers["task"],
                            "value": pd.to_numeric(dataset.answers["label"])})
    gold = pd.Series(pd.to_numeric(dataset.gold["label"]).to_numpy(), index=dataset.gold["task"].to_numpy())

    def mae(estimate: pd.Series) -> float:
        return float(np.mean(np.abs(estimate.reindex(gold.index).to_numpy(dtype=float) - gold.to_numpy())))

    # Our input format: tasks and workers factorized in sorted string order, as `encode` does.
    tasks = np.array(sorted(set(dataset.answers["task"])), dtype=object)
    workers = np.array(sorted(set(dataset.answers["worker"])), dtype=object)
    unknown = sorted(set(gold.index) - set(tasks))
    if unknown:
        raise ValueError(f"{dataset.name}: {len(unknown)} gold tasks have no answers, e.g. {unknown[0]!r}")
    ratings = Ratings(item=np.searchsorted(tasks, dataset.answers["task"].to_numpy(dtype=object)),
                      worker=np.searchsorted(workers, dataset.answers["worker"].to_numpy(dtype=object)),
                      score=answers["value"].to_numpy(dtype=float), n_items=len(tasks), n_workers=len(workers))
    gold_items = np.searchsorted(tasks, gold.index.to_numpy(dtype=object))

    def mae_of_items(estimate: np.ndarray) -> float:
        return float(np.mean(np.abs(np.asarray(estimate)[gold_items] - gold.to_numpy(dtype=float))))

    return [
        timed_cell("ours mean", lambda: mean_scores(ratings), mae_of_items),
        timed_cell("ours median", lambda: median_scores(ratings), mae_of_items),
        timed_cell("ours bias_corrected", lambda: bias_corrected_scores(ratings).scores, mae_of_items),
        timed_cell("pandas mean", lambda: answers.groupby("task")["value"].mean(), mae),
        timed_cell("pandas median", lambda: answers.groupby("task")["value"].median(), mae),
    ]


def run_dataset(dataset: Dataset, cores: Sequence[Core]) -> list[Cell]:
    if dataset.kind == NUMERIC:
        return run_numeric(dataset)
    return run_ours(encode(dataset), cores) + run_crowdkit(dataset)


# ---------------------------------------------------------------------------------------------
# Report


def scored(cells: Sequence[Cell], prefix: str = "") -> list[tuple[float, Cell]]:
    """(score, cell) for the cells with a score whose method name starts with `prefix`."""
    return [(cell.score, cell) for cell in cells if cell.score is not None and cell.method.startswith(prefix)]


def best_scores(cells: Sequence[Cell], higher_is_better: bool) -> set[str]:
    scores = [score for score, _ in scored(cells)]
    if not scores:
        return set()
    best = max(scores) if higher_is_better else min(scores)
    return {cell.method for score, cell in scored(cells) if score == best}


def format_score(cell: Cell, best: set[str]) -> str:
    if cell.score is None:
        return cell.note or ""
    return f"{cell.score:.4f}" + ("*" if cell.method in best else "")


def format_seconds(cell: Cell) -> str:
    return "" if cell.seconds is None else f"{cell.seconds:.3f}"


def table_rows(results: dict[str, list[Cell]], higher_is_better: bool) -> tuple[list[str], list[list[str]]]:
    methods = list(dict.fromkeys(cell.method for cells in results.values() for cell in cells))
    header = ["dataset"] + [column for method in methods for column in (method, f"{method} s")]
    rows = []
    for name, cells in results.items():
        by_method = {cell.method: cell for cell in cells}
        best = best_scores(cells, higher_is_better)
        row = [name]
        for method in methods:
            cell = by_method.get(method, Cell(method, note="n/a"))
            row += [format_score(cell, best), format_seconds(cell)]
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|",
                      *(line(row) for row in rows)])


def best_of(cells: Sequence[Cell], prefix: str, higher_is_better: bool = True) -> Cell | None:
    """The best-scoring cell among methods starting with `prefix`; the first listed wins a tie."""
    candidates = scored(cells, prefix)
    if not candidates:
        return None
    pick = max if higher_is_better else min
    return pick(candidates, key=lambda pair: pair[0])[1]


def describe(cell: Cell | None) -> str:
    if cell is None:
        return "none ran"
    return f"{cell.method} " + (f"{cell.score:.4f}" if cell.score is not None else f"({cell.note})")


def verdict(ours: Cell | None, theirs: Cell | None) -> str:
    if ours is None or theirs is None or ours.score is None or theirs.score is None:
        return "n/a"
    return "yes" if ours.score >= theirs.score else "NO"


def categorical_summary(name: str, cells: Sequence[Cell]) -> str:
    by_method = {cell.method: cell for cell in cells}
    ours_ds, ck_ds = by_method.get(OUR_DS), by_method.get(CROWDKIT_DS)
    ours, theirs = best_of(cells, "ours "), best_of(cells, "ck ")
    return (f"{name}: our best {describe(ours)} vs crowd-kit best {describe(theirs)} -> ours >= theirs: "
            f"{verdict(ours, theirs)}; {describe(ours_ds)} vs {describe(ck_ds)} -> "
            f"ours ds >= crowd-kit DawidSkene: {verdict(ours_ds, ck_ds)}")


def numeric_summary(name: str, cells: Sequence[Cell]) -> str:
    ours = best_of(cells, "ours ", higher_is_better=False)
    best = "none ran" if ours is None else f"{ours.method} MAE {ours.score:.4f}"
    return f"{name}: our best {best}; crowd-kit: no applicable aggregator, no comparison"


def print_report(kinds: dict[str, str], results: dict[str, list[Cell]]) -> None:
    for kind in (CATEGORICAL, NUMERIC):
        chosen = {name: cells for name, cells in results.items() if kinds[name] == kind}
        if not chosen:
            continue
        higher_is_better = kind == CATEGORICAL
        metric = ("accuracy on gold tasks (higher is better)" if higher_is_better
                  else "MAE vs gold (lower is better)")
        print(f"\n## {kind}: {metric}; '<method> s' = seconds; * = best in row\n")
        print(markdown_table(*table_rows(chosen, higher_is_better)))
        print()
        if kind == NUMERIC:
            print(NUMERIC_NOTE)
        summary = categorical_summary if higher_is_better else numeric_summary
        for name, cells in chosen.items():
            print(summary(name, cells))


def describe_dataset(dataset: Dataset) -> str:
    answers = dataset.answers
    return (f"{dataset.name} ({dataset.kind}): {answers['task'].nunique()} tasks, "
            f"{answers['worker'].nunique()} workers, {len(answers)} answers, {len(dataset.gold)} gold")


def installed_versions() -> str:
    versions = [f"python {sys.version.split()[0]}", f"numpy {np.__version__}", f"pandas {pd.__version__}"]
    for module_name, label in (("crowdkit", "crowd-kit"), ("sklearn", "scikit-learn")):
        try:
            module = importlib.import_module(module_name)
            versions.append(f"{label} {getattr(module, '__version__', '?')}")
        except ImportError:
            versions.append(f"{label} not installed")
    return ", ".join(versions)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="folder of dataset folders (default: ../shared/datasets from the repo root, "
                             f"else {FALLBACK_ROOT})")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="dataset folder names to run (default: every folder with a SOURCE.json)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.root if args.root is not None else default_root()
    print(f"datasets: {root}\nversions: {installed_versions()}")
    kinds: dict[str, str] = {}
    results: dict[str, list[Cell]] = {}
    unreadable = 0
    cores = our_cores()   # resolved once, so every row of the table uses the same set of cores
    for folder in dataset_folders(root, args.datasets):
        try:
            dataset = load_dataset(folder)
            print(describe_dataset(dataset), flush=True)
            cells = run_dataset(dataset, cores)   # bad values, gold tasks without answers: ValueError
        except (OSError, ValueError) as exc:
            print(f"cannot read dataset {folder}: {one_line(exc)}", file=sys.stderr)
            unreadable += 1
            continue
        kinds[dataset.name] = dataset.kind
        results[dataset.name] = cells
    print_report(kinds, results)
    if args.json:
        datasets = {name: {"kind": kinds[name], "methods": {cell.method: {"score": cell.score, "seconds": cell.seconds,
                                                                          "note": cell.note} for cell in cells}}
                    for name, cells in results.items()}
        args.json.write_text(json.dumps({"ok": not unreadable and bool(results), "unreadable": unreadable,
                                         "datasets": datasets}, indent=2, sort_keys=True), encoding="utf-8")
    return 1 if unreadable or not results else 0


if __name__ == "__main__":
    sys.exit(main())
