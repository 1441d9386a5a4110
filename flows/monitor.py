"""Prefect flow `monitor`: the drift report for the latest window; on drift, a
`vgg2resnet.drift.detected` event that prefect.yaml's trigger turns into a `migrate` run.

    python -m flows.monitor
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.monitor import emit_drift_event, run_monitor


@flow(name="monitor", log_prints=True)
def monitor(project_dir: str = ".", since: datetime | None = None) -> dict:
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    # Paths in params.yaml are relative to the project; a worker may run elsewhere.
    m, p = params.monitoring, params.paths
    params = params.model_copy(
        update={
            "monitoring": m.model_copy(
                update={
                    "log_dir": root / m.log_dir,
                    "report_dir": root / m.report_dir,
                    "retained_dir": root / m.retained_dir,
                }
            ),
            "paths": p.model_copy(update={"models_dir": root / p.models_dir, "metrics_dir": root / p.metrics_dir}),
        }
    )
    summary = run_monitor(params, since=since)
    create_markdown_artifact(
        key="drift-report",
        markdown=(
            f"**{summary['status']}** for `{summary['model_tag']}`: {summary['rows_compared']['current']} logged "
            f"predictions vs {summary['rows_compared']['reference']} reference rows; drifted: "
            f"{', '.join(summary.get('drifted_columns', [])) or 'none'}. Report: `{summary.get('report_html')}`"
        ),
    )
    if summary["drift_detected"]:
        summary["event_id"] = emit_drift_event(summary, params)
    get_run_logger().info("drift: %s", summary["status"])
    return summary


if __name__ == "__main__":
    monitor()
