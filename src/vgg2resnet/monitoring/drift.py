"""Evidently drift report of logged traffic against the reference profile, and the trend page
of the drift share over past monitor runs.

Columns: image statistics and prediction confidence (numerical, per-column tests), the
predicted category (categorical), and the embedding (Evidently's model-based embedding drift).
The verdict: the share of drifted columns reaches `drift_share`, or the embedding drifted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.config import MonitoringParams
from vgg2resnet.serving.classifier import IMAGE_STAT_COLUMNS

NUMERICAL = [*IMAGE_STAT_COLUMNS, "confidence"]
CATEGORICAL = ["prediction"]


def _failed(test: dict) -> bool:
    status = test["status"]
    return getattr(status, "value", status) == "FAIL"


def build_report(reference: pd.DataFrame, current: pd.DataFrame, embedding: list[str], params: MonitoringParams):
    """Run the Evidently report (current first, as Evidently expects); return (snapshot, summary)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    # Size columns are constant when every image has one size: Evidently cannot test those.
    columns = [c for c in NUMERICAL + CATEGORICAL if reference[c].nunique() > 1 or current[c].nunique() > 1]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c in NUMERICAL] + embedding,
        categorical_columns=[c for c in columns if c in CATEGORICAL],
        embeddings={"embedding": embedding},
    )
    keep = columns + embedding
    report = Report(
        [
            DataDriftPreset(columns=columns, drift_share=params.drift_share),
            EmbeddingsDrift(embeddings_name="embedding", tests=[lte(params.embedding_threshold)]),
        ],
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(current[keep], data_definition=definition),
        Dataset.from_pandas(reference[keep], data_definition=definition),
    )
    return snapshot, summarise(snapshot.dict(), columns)


def summarise(result: dict, columns: list[str]) -> dict:
    column_scores, share, embedding = {}, 0.0, {}
    scores = {
        m["config"].get("column"): m["value"] for m in result["metrics"] if m["config"]["type"].endswith(":ValueDrift")
    }
    for metric in result["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith(":EmbeddingsDrift"):
            embedding["score"] = float(metric["value"])
    for test in result["tests"]:
        config = test["metric_config"]["params"]
        if config["type"].endswith(":ValueDrift"):
            column = config["column"]
            column_scores[column] = {
                "score": float(scores[column]),
                "method": config.get("method"),
                "drifted": _failed(test),
            }
        elif config["type"].endswith(":EmbeddingsDrift"):
            embedding["drifted"] = _failed(test)
    dataset_drift = any(
        _failed(t) for t in result["tests"] if t["metric_config"]["params"]["type"].endswith(":DriftedColumnsCount")
    )
    drifted = sorted(c for c, s in column_scores.items() if s["drifted"])
    if embedding.get("drifted"):
        drifted.append("embedding")
    return {
        "drift_detected": dataset_drift or bool(embedding.get("drifted")),
        "share_drifted_columns": share,
        "drifted_columns": drifted,
        "column_scores": column_scores,
        "embedding_drift": embedding,
        "columns_tested": columns,
    }


def write_trend(report_dir: Path, target: Path, drift_share: float) -> Path:
    """Plot the share of drifted columns of every finished monitor run in report_dir against the
    drift_share threshold; hovering a run shows which columns drifted and how many rows were
    compared, so a real alarm can be told from a thin window."""
    import plotly.graph_objects as go

    runs = []
    for path in sorted(Path(report_dir).glob("*.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") in ("drift", "no_drift"):
            runs.append(summary)
    figure = go.Figure(
        go.Scatter(
            x=[r["created"] for r in runs],
            y=[r["share_drifted_columns"] for r in runs],
            mode="lines+markers",
            marker={"color": ["crimson" if r["drift_detected"] else "seagreen" for r in runs], "size": 10},
            customdata=[
                [
                    ", ".join(r["drifted_columns"]) or "none",
                    r["rows_compared"]["current"],
                    r["rows_compared"]["reference"],
                    r["model_tag"],
                ]
                for r in runs
            ],
            hovertemplate=(
                "%{x}<br>share drifted %{y:.2f}<br>drifted: %{customdata[0]}<br>rows compared: "
                "%{customdata[1]} logged vs %{customdata[2]} reference<br>model %{customdata[3]}"
                "<extra></extra>"
            ),
            name="share of drifted columns",
        )
    )
    figure.add_hline(
        y=drift_share,
        line_dash="dash",
        line_color="crimson",
        annotation_text=f"monitoring.drift_share {drift_share:g}",
        annotation_position="top left",
    )
    figure.update_layout(
        title="Drift share per monitor run (red: drift detected)",
        yaxis={"title": "share of drifted columns", "range": [0, 1]},
        xaxis={"title": "run"},
    )
    atomic.write_text(target, figure.to_html(include_plotlyjs=True, full_html=True))
    return target
