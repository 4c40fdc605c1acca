"""The CSV side inputs of consensus methods: gold labels (item_id,label) and vote weights (annotator_id,weight)."""
from __future__ import annotations

import csv
import io


def read_weights_csv(text: str) -> dict[str, float]:
    """annotator_id,weight rows (header optional) -> {annotator_id: weight}."""
    weights = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_number == 1 and row[0] == "annotator_id"):
            continue
        if len(row) != 2:
            raise ValueError(f"weights line {line_number}: expected annotator_id,weight, got {row}")
        try:
            weights[row[0]] = float(row[1])
        except ValueError:
            raise ValueError(f"weights line {line_number}: {row[1]!r} is not a number") from None
    return weights


def read_credit_names_csv(text: str) -> dict[str, str]:
    """annotator_id,name rows (header optional) of annotators who asked to be credited by name."""
    names: dict[str, str] = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_number == 1 and row[:2] == ["annotator_id", "name"]):
            continue
        if len(row) != 2 or not row[0] or not row[1].strip():
            raise ValueError(f"credit names line {line_number}: expected annotator_id,name, got {row}")
        if names.get(row[0], row[1].strip()) != row[1].strip():
            raise ValueError(f"credit names line {line_number}: {row[0]!r} has two names")
        names[row[0]] = row[1].strip()
    return names


def read_gold_csv(text: str) -> dict[str, str]:
    """item_id,label rows (header optional) -> {item_id: label}."""
    gold = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_number == 1 and row[:2] in (["item_id", "label"], ["task", "label"])):
            continue
        if len(row) != 2 or not row[0]:
            raise ValueError(f"gold line {line_number}: expected item_id,label, got {row}")
        gold[row[0]] = row[1]
    return gold
