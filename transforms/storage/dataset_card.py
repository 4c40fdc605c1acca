"""The dataset card of a version: README.md with a Hugging Face-style YAML header, made from its manifest.

The card holds no clock reading (no created_at) and no version number (the folder's name and the
manifest say it), so the same inputs, params and code give the same bytes, as every other file.
It tells what the version is (counts, label distribution, method, agreement, provenance) and how to load
it, and credits the annotators whose work it is, by count only.
"""
from __future__ import annotations

import json
from typing import Any

CARD_FILE = "README.md"
TABLE_GLOBS = {"labels": "labels/*.parquet", "annotators": "annotators/*.parquet",
               "item_agreement": "item_agreement/*.parquet"}


def _yaml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def dataset_card(manifest: dict[str, Any]) -> str:
    """README.md text of the version `manifest` describes (its `files` may still lack the card itself)."""
    counts, params = manifest["counts"], manifest["params"]
    dataset = manifest["dataset"]
    distribution = manifest.get("label_distribution", {})
    agreement = manifest.get("agreement", {})
    annotators = manifest.get("annotators", {})
    tables = [name for name in TABLE_GLOBS if any(entry["path"].startswith(name + "/") for entry in manifest["files"])]
    header = ["---", f"pretty_name: {_yaml_string(dataset)}",
              "tags:", "- labelbeam", "- crowdsourcing", "- consensus-labels", "configs:"]
    for table in tables:
        header += [f"- config_name: {'default' if table == 'labels' else table}", "  data_files:",
                   "  - split: train", f"    path: {_yaml_string(TABLE_GLOBS[table])}"]
    header.append("---")
    lines = [f"# {dataset}", "",
             f"Consensus labels of {counts['items']} items, aggregated by labelbeam from {counts['votes']} standing "
             f"votes with the method `{params['method']}`.", ""]
    lines += ["## Counts", "", "| count | value |", "|---|---|"]
    lines += [f"| {key} | {counts[key]} |" for key in sorted(counts)]
    lines += ["", "## Labels", "", "| label | items |", "|---|---|"]
    lines += [f"| {label if label is not None else '(none)'} | {items} |" for label, items in distribution.items()]
    status = manifest.get("status", {})
    lines += ["", "Status of the rows: " + ", ".join(f"{name} {rows}" for name, rows in status.items()) + "."]
    if agreement.get("items"):
        lines += ["", f"Mean per-item agreement (share of agreeing ordered pairs of votes): "
                      f"{agreement['mean']:.4f} over {agreement['items']} items with two or more votes."]
    if agreement.get("krippendorff_alpha") is not None:
        lines += ["", f"Krippendorff's alpha (nominal, chance-corrected): {agreement['krippendorff_alpha']:.4f} over "
                      f"{agreement['pairable_votes']} pairable votes."]
    lines += ["", "## Method and provenance", "", f"- method: `{params['method']}`; parameters: "
              f"`{json.dumps(params, sort_keys=True)}`",
              f"- inputs: {len(manifest['inputs'])} files, {sum(i['bytes'] for i in manifest['inputs'])} bytes "
              "(paths and digests in manifest.json)",
              f"- code version: `{manifest['code_version']}`",
              f"- dead letters: {manifest.get('dead_letters', {}).get('rows', counts['invalid'])} events rejected, "
              "kept in quarantine outside this version"]
    lines += ["", "## Who made these labels", "",
              f"{annotators.get('rows', 0)} annotators made the votes behind this version. Their work is the "
              "dataset; please credit them. They appear only under keyed pseudonyms, in the annotators table."]
    if annotators.get("credited_names"):
        lines += ["", "Credited by name, at their own request: " + ", ".join(annotators["credited_names"]) + "."]
    time = manifest.get("labeling_time")
    if time:
        votes_per_item = f"{counts['votes'] / counts['items']:.2f}" if counts.get("items") else "no"
        lines += ["", f"They spent {time['hours']:.1f} hours labeling: the summed `duration_ms` of all "
                      f"{time['events']} valid events, revisions that were later replaced included "
                      f"({time['events_without_duration']} events carried no duration and add nothing). Each item "
                      f"has {votes_per_item} standing votes on average; hours per annotator are in the annotators "
                      "table."]
    lines.append("")
    lines += ["## How to load", "", "```python", "import pyarrow.dataset as ds",
              'labels = ds.dataset("labels/", format="parquet").to_table()  # paths relative to this folder',
              "```", "", "```python",
              "from labelbeam.transforms.storage.version_store import latest_table_dir",
              f'latest_labels = latest_table_dir("ROOT", "{dataset}")  # the version _latest points at',
              "```", ""]
    return "\n".join(header + lines)
