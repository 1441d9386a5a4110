"""`vgg2resnet monitor`: logged traffic of a time window vs the reference -> drift report + summary.

    vgg2resnet monitor                       # the last monitoring.window_hours
    vgg2resnet monitor --since 2026-11-24T09:00:00+00:00
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.errors import UserError
from vgg2resnet.monitoring.drift import build_report
from vgg2resnet.monitoring.health import teacher_agreement
from vgg2resnet.monitoring.logs import read_inference_log
from vgg2resnet.monitoring.trend import write_trend

log = logging.getLogger(__name__)


def reference_path(params: Params):
    return params.paths.models_dir / "reference.parquet"


def run_monitor(params: Params, since: datetime | None = None, until: datetime | None = None) -> dict:
    m = params.monitoring
    now = datetime.now(timezone.utc)
    since = since or now - timedelta(hours=m.window_hours)
    started = time.perf_counter()
    path = reference_path(params)
    if not path.is_file():
        raise UserError(f"{path}: no reference profile; run `dvc repro reference` after a promotion")
    reference = pd.read_parquet(path)
    model_tag = str(reference["model_tag"].iloc[0])
    window = read_inference_log(m.log_dir, since, until)
    current = window.rows
    if len(current):
        other = current["model_tag"] != model_tag
        if other.any():
            log.info("ignoring %d predictions of other model versions than %s", int(other.sum()), model_tag)
        current = current[~other]
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    summary = {
        "created": now.isoformat(),
        "model_tag": model_tag,
        "window": {"since": since.isoformat(), "until": (until or now).isoformat()},
        "rows_compared": {"reference": len(reference), "current": len(current)},
        "skipped_log_lines": window.skipped_lines,
    }
    if len(current) < m.min_rows:
        summary.update(status="not_enough_data", drift_detected=False,
                       message=f"{len(current)} logged predictions in the window, fewer than "
                               f"monitoring.min_rows={m.min_rows}: no verdict")
        log.warning("monitor: %s", summary["message"])
    else:
        embedding = [c for c in reference.columns if c.startswith("emb_")]
        snapshot, drift = build_report(reference, current, embedding, m)
        summary.update(drift)
        summary["status"] = "drift" if drift["drift_detected"] else "no_drift"
        html = m.report_dir / f"{stamp}.html"
        with atomic.atomic_path(html) as tmp:
            snapshot.save_html(str(tmp))
        summary["report_html"] = str(html)
    if len(current):
        summary["teacher_agreement"] = teacher_agreement(current, params)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic.write_json(m.report_dir / f"{stamp}.json", summary)
    write_trend(m.report_dir)
    log.info("monitor: %s (%d current rows vs %d reference rows; drifted: %s) -> %s", summary["status"],
             len(current), len(reference), ", ".join(summary.get("drifted_columns", [])) or "none",
             m.report_dir / f"{stamp}.json")
    return summary
