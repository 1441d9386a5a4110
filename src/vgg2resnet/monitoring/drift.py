"""Evidently drift report of logged traffic against the reference profile.

Columns: image statistics and prediction confidence (numerical, per-column tests), the
predicted category (categorical), and the embedding (Evidently's model-based embedding drift).
The verdict: the share of drifted columns reaches `drift_share`, or the embedding drifted.
"""

from __future__ import annotations

import pandas as pd

from vgg2resnet.config import MonitoringParams
from vgg2resnet.monitoring.features import IMAGE_STAT_COLUMNS

NUMERICAL = [*IMAGE_STAT_COLUMNS, "confidence"]
CATEGORICAL = ["prediction"]


def _failed(test: dict) -> bool:
    status = test["status"]
    return getattr(status, "value", status) == "FAIL"


def build_report(reference: pd.DataFrame, current: pd.DataFrame, embedding: list[str],
                 params: MonitoringParams):
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
    report = Report([
        DataDriftPreset(columns=columns, drift_share=params.drift_share),
        EmbeddingsDrift(embeddings_name="embedding", tests=[lte(params.embedding_threshold)]),
    ], include_tests=True)
    snapshot = report.run(Dataset.from_pandas(current[keep], data_definition=definition),
                          Dataset.from_pandas(reference[keep], data_definition=definition))
    return snapshot, summarise(snapshot.dict(), columns)


def summarise(result: dict, columns: list[str]) -> dict:
    column_scores, share, embedding = {}, 0.0, {}
    scores = {m["config"].get("column"): m["value"] for m in result["metrics"]
              if m["config"]["type"].endswith(":ValueDrift")}
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
            column_scores[column] = {"score": float(scores[column]), "method": config.get("method"),
                                     "drifted": _failed(test)}
        elif config["type"].endswith(":EmbeddingsDrift"):
            embedding["drifted"] = _failed(test)
    dataset_drift = any(_failed(t) for t in result["tests"]
                        if t["metric_config"]["params"]["type"].endswith(":DriftedColumnsCount"))
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
