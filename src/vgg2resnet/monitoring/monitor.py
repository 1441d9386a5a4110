"""`vgg2resnet monitor`: logged traffic of a time window vs the reference of the model version
that served it -> drift report + summary.

    vgg2resnet monitor                       # the last monitoring.window_hours
    vgg2resnet monitor --since 2026-11-24T09:00:00+00:00
    vgg2resnet monitor --model-tag NAME:VERSION   # another version's traffic
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
from vgg2resnet.monitoring.reference import read_reference
from vgg2resnet.monitoring.trend import write_trend
from vgg2resnet.packaging import store

log = logging.getLogger(__name__)


def served_version(params: Params, rows: pd.DataFrame, model_tag: str | None = None):
    """The model-store version to judge: the one asked for, else the one that served the window's
    latest prediction, else the one promoted now."""
    import bentoml
    from bentoml.exceptions import NotFound

    if model_tag is None and len(rows):
        latest = pd.to_datetime(rows["logged_at"], utc=True, format="ISO8601").idxmax()
        model_tag = str(rows.loc[latest, "model_tag"])
    if model_tag is None:
        promoted = store.current(params.serving.model_name)
        if promoted is None:
            raise UserError(f"no promoted '{params.serving.model_name}' in the BentoML model store and no "
                            "logged traffic: nothing to monitor yet")
        return promoted
    try:
        return bentoml.models.get(model_tag)
    except NotFound:
        raise UserError(f"model version {model_tag} is not in the BentoML model store; "
                        "`bentoml models list` shows the versions there") from None


def run_monitor(params: Params, since: datetime | None = None, until: datetime | None = None,
                model_tag: str | None = None) -> dict:
    m = params.monitoring
    now = datetime.now(timezone.utc)
    since = since or now - timedelta(hours=m.window_hours)
    started = time.perf_counter()
    window = read_inference_log(m.log_dir, since, until)
    current = window.rows
    version = served_version(params, current, model_tag)
    model_tag = str(version.tag)
    reference = read_reference(version)
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
