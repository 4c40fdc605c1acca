"""`labelbeam report ROOT --dataset D [--version N] [--output FILE]`: one self-contained HTML page on a
version's label quality and the people behind it.

Plots (plotly, its JavaScript inlined once so the page opens offline): label distribution, confidence
histogram, annotator accuracy against volume with 95% intervals, confusion matrices of the annotators
with the most votes, agreement and labeling hours across versions; and a table of the items that need
more votes. Annotators appear only under the version's keyed pseudonyms; no event content is shown.
"""
from __future__ import annotations

import argparse
import html
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from labelbeam.pipelines import catalog, inspect
from labelbeam.pipelines.errors import UserError
from labelbeam.transforms.storage import stores, version_store

TOP_ANNOTATORS = 3        # confusion matrices shown
ITEMS_LISTED = 25         # items that need more votes, least confident first


def _figures(manifest: dict[str, Any], labels, annotators, history: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    figures = []
    distribution = manifest.get("label_distribution", {})
    figures.append(("Label distribution", go.Figure(go.Bar(x=[str(k) for k in distribution],
                                                           y=list(distribution.values())))
                    .update_layout(xaxis_title="consensus label", yaxis_title="items")))
    confidence = [value for value in labels.column("confidence").to_pylist() if value is not None]
    figures.append(("Confidence", go.Figure(go.Histogram(x=confidence, xbins={"start": 0, "end": 1.0001,
                                                                               "size": 0.05}))
                    .update_layout(xaxis_title="confidence of the consensus label", yaxis_title="items")))
    voting = [row for row in annotators if row["votes"] and row["accuracy"] is not None]
    if voting:
        # Versions built before intervals and flags were recorded have neither: plain points then.
        with_intervals = all(row.get("accuracy_low") is not None for row in voting)
        figures.append(("Annotator accuracy against volume (red: low with evidence)", go.Figure(go.Scatter(
            x=[row["votes"] for row in voting], y=[row["accuracy"] for row in voting], mode="markers",
            text=[row["annotator"] for row in voting],
            marker={"color": ["#d62728" if row.get("low_accuracy") else "#1f77b4" for row in voting]},
            error_y={"type": "data", "symmetric": False, "color": "rgba(60, 60, 60, 0.45)", "thickness": 1,
                     "array": [row["accuracy_high"] - row["accuracy"] for row in voting],
                     "arrayminus": [row["accuracy"] - row["accuracy_low"] for row in voting]}
            if with_intervals else None))
            .update_layout(xaxis_title="votes", yaxis_title="estimated accuracy (95% interval)",
                           xaxis_type="log" if _spread(row["votes"] for row in voting) > 10 else "linear",
                           yaxis_range=[0, 1.02])))
    for row in sorted(voting, key=lambda row: (-row["votes"], row["annotator"]))[:TOP_ANNOTATORS]:
        names = row.get("confusion_labels") or manifest.get("annotators", {}).get("confusion_labels")
        if row["confusion"] and names:
            matrix = [[cell if cell is not None else 0.0 for cell in (line or [0.0] * len(names))]
                      for line in row["confusion"]]
            figures.append((f"Confusion of {row['annotator']} ({row['votes']} votes)", go.Figure(go.Heatmap(
                z=matrix, x=names, y=names, zmin=0, zmax=1, colorscale="Blues"))
                .update_layout(xaxis_title="answered", yaxis_title="true (model)", yaxis_autorange="reversed")))
    if len(history) > 1:
        versions = [entry["version"] for entry in history]
        figure = go.Figure()
        figure.add_trace(go.Scatter(x=versions, y=[entry.get("agreement", {}).get("krippendorff_alpha")
                                                   for entry in history], name="Krippendorff's alpha"))
        figure.add_trace(go.Scatter(x=versions, y=[entry.get("agreement", {}).get("mean") for entry in history],
                                    name="mean pair agreement"))
        figure.add_trace(go.Bar(x=versions, y=[entry.get("labeling_time", {}).get("hours") for entry in history],
                                name="labeling hours", yaxis="y2", opacity=0.4))
        figures.append(("Agreement and labeling hours across versions", figure.update_layout(
            xaxis_title="version", xaxis_dtick=1, yaxis_title="agreement", yaxis_range=[0, 1],
            yaxis2={"title": "hours", "overlaying": "y", "side": "right"},
            legend={"orientation": "h", "y": -0.25})))
    return figures


def _spread(values) -> float:
    values = [value for value in values if value > 0]
    return max(values) / min(values) if values else 1.0


def _needs_votes(labels) -> list[dict[str, Any]]:
    rows = [row for row in labels.select(["item_id", "label", "confidence", "num_votes", "status"]).to_pylist()
            if row["status"] != "ok"]
    return sorted(rows, key=lambda row: (row["confidence"] if row["confidence"] is not None else -1.0,
                                         row["item_id"]))[:ITEMS_LISTED]


def _facts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    counts, agreement = manifest["counts"], manifest.get("agreement", {})
    time, annotators = manifest.get("labeling_time", {}), manifest.get("annotators", {})

    def number(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}f}"
    return [("items", f"{counts['items']:,}"), ("standing votes", f"{counts['votes']:,}"),
            ("annotators", f"{annotators.get('rows', 0):,}"),
            ("labeling hours", number(time.get("hours"), 1) if time else "not recorded"),
            ("Krippendorff's alpha (nominal)", number(agreement.get("krippendorff_alpha"))),
            ("Fleiss' kappa", number(agreement.get("fleiss_kappa")) if agreement.get("fleiss_kappa") is not None
             else f"n/a ({agreement.get('fleiss_kappa_undefined') or 'not recorded'})"),
            ("mean pair agreement", number(agreement.get("mean"))),
            ("method", manifest["params"]["method"]),
            ("events read / invalid / duplicates", f"{counts['read']:,} / {counts['invalid']:,} / "
                                                   f"{counts['duplicates']:,}")]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(manifest: dict[str, Any], labels, annotators: list[dict[str, Any]],
           history: list[dict[str, Any]]) -> str:
    """The report's HTML: facts, plots, and the items that need more votes."""
    import plotly.io as pio

    title = f"{manifest['dataset']} version {manifest['version']}: label quality"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             ".plots{display:flex;flex-wrap:wrap;gap:12px}.plot{width:540px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Built {html.escape(manifest['created_at'])} by labelbeam {html.escape(manifest['code_version'])}. "
             "Every label here was made by a person; annotators are shown under keyed pseudonyms only.</p>",
             "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                 for k, v in _facts(manifest)) + "</table>", "<div class='plots'>"]
    for index, (name, figure) in enumerate(_figures(manifest, labels, annotators, history)):
        figure.update_layout(title=name, height=380, margin={"l": 50, "r": 30, "t": 50, "b": 50})
        parts.append("<div class='plot'>" + pio.to_html(figure, full_html=False, include_plotlyjs=index == 0,
                                                        div_id=f"plot-{index}",
                                                        config={"displayModeBar": False}) + "</div>")
    parts.append("</div><h2>Items that need more votes</h2>")
    needs = _needs_votes(labels)
    if needs:
        parts.append("<table><tr><th>item</th><th>label</th><th>confidence</th><th>votes</th><th>status</th></tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row[k]))}</td>"
                                                for k in ("item_id", "label", "confidence", "num_votes", "status"))
                               + "</tr>" for row in needs) + "</table>")
    else:
        parts.append("<p>None: every item has a settled label.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def read_annotator_rows(root: str, dataset: str, version: int, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The version's annotator table as rows (through the stores, without importing Beam)."""
    path = stores.join(version_store.version_dir(root, dataset, version), manifest["annotators"]["file"])
    try:
        data = version_store.read_bytes(path)
        if data is None:
            raise FileNotFoundError("no such file")
        return pq.read_table(pa.BufferReader(data)).to_pylist()
    except (OSError, stores.StoreError, pa.ArrowException) as err:
        raise UserError(f"cannot read {path}: {err}; `labelbeam verify` checks the version's files") from None


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    dataset, version, manifest = catalog.resolve_version(args.root, args.dataset, args.version)
    labels = inspect.read_labels(args.root, dataset, version, manifest, (*inspect.LABEL_COLUMNS, "num_votes"))
    annotators = read_annotator_rows(args.root, dataset, version, manifest)
    history = []
    for number in version_store.version_numbers(args.root, dataset):
        if number <= version:
            earlier = version_store.read_manifest(args.root, dataset, number)
            if earlier is not None:
                history.append(earlier)
    output = args.output or f"{dataset}-v{version}-report.html"
    try:
        with open(output, "w", encoding="utf-8") as stream:
            stream.write(render(manifest, labels, annotators, history))
    except OSError as err:
        raise UserError(f"cannot write the report to {output}: {err.strerror}") from None
    print(f"report of {dataset} version {version} -> {os.path.abspath(output)}")
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    catalog.add_catalog_arguments(parser, with_version=False)
    parser.add_argument("--version", type=int, help="default: the version _latest points at")
    parser.add_argument("--output", metavar="FILE", help="the HTML file (default: <dataset>-v<N>-report.html)")
