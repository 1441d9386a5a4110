"""A small trend page of the drift share over past monitor runs: reports/drift/trend.html."""

from __future__ import annotations

import json
from pathlib import Path

from vgg2resnet import atomic


def write_trend(report_dir: Path) -> Path:
    import plotly.graph_objects as go

    runs = []
    for path in sorted(Path(report_dir).glob("*.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") in ("drift", "no_drift"):
            runs.append(summary)
    figure = go.Figure(go.Scatter(
        x=[r["created"] for r in runs], y=[r["share_drifted_columns"] for r in runs], mode="lines+markers",
        marker={"color": ["crimson" if r["drift_detected"] else "seagreen" for r in runs], "size": 10},
        text=[", ".join(r["drifted_columns"]) or "no drift" for r in runs], name="share of drifted columns",
    ))
    figure.update_layout(title="Drift share per monitor run (red: drift detected)",
                         yaxis={"title": "share of drifted columns", "range": [0, 1]}, xaxis={"title": "run"})
    target = Path(report_dir) / "trend.html"
    atomic.write_text(target, figure.to_html(include_plotlyjs=True, full_html=True))
    return target
