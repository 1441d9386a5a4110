"""`vgg2resnet monitor`: logged traffic of a time window vs the reference of the model version
that served it -> drift report + summary; and the drift event that starts retraining.

    vgg2resnet monitor                       # the last monitoring.window_hours
    vgg2resnet monitor --since 2026-11-24T09:00:00+00:00
    vgg2resnet monitor --model-tag NAME:VERSION   # another version's traffic

The inference log is the service's JSON lines (bentoml.monitor), read tolerantly: a corrupt
line is skipped and counted. A drift event has a cool-down, so one drift episode starts one
retraining run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.locking import exclusive
from vgg2resnet.monitoring.drift import build_report, write_trend
from vgg2resnet.monitoring.health import teacher_agreement
from vgg2resnet.packaging import store

log = logging.getLogger(__name__)
EVENT = "vgg2resnet.drift.detected"


@dataclass
class LogWindow:
    rows: pd.DataFrame
    skipped_lines: int
    files: int


def read_inference_log(log_dir: Path, since: datetime, until: datetime | None = None) -> LogWindow:
    """Records logged at or after `since` (and before `until`); corrupt lines are skipped and counted.

    Memory holds the window only: files last written before `since` are not opened, and the
    others are read a line at a time."""
    records, skipped, files = [], 0, 0
    start, end = pd.Timestamp(since), None if until is None else pd.Timestamp(until)
    for path in sorted(Path(log_dir).glob("*.log")) if Path(log_dir).is_dir() else []:
        if path.stat().st_mtime < start.timestamp():
            continue
        files += 1
        with path.open(errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    stamp = pd.Timestamp(record["logged_at"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    skipped += 1
                    continue
                if stamp >= start and (end is None or stamp < end):
                    records.append(record)
    if skipped:
        log.warning("skipped %d unreadable line(s) in %s", skipped, log_dir)
    return LogWindow(pd.DataFrame.from_records(records), skipped, files)


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
            raise UserError(
                f"no promoted '{params.serving.model_name}' in the BentoML model store and no "
                "logged traffic: nothing to monitor yet"
            )
        return promoted
    try:
        return bentoml.models.get(model_tag)
    except NotFound:
        raise UserError(
            f"model version {model_tag} is not in the BentoML model store; "
            "`bentoml models list` shows the versions there"
        ) from None


def run_monitor(
    params: Params, since: datetime | None = None, until: datetime | None = None, model_tag: str | None = None
) -> dict:
    m, layout = params.monitoring, Artifacts(params)
    now = datetime.now(UTC)
    since = since or now - timedelta(hours=m.window_hours)
    started = time.perf_counter()
    window = read_inference_log(m.log_dir, since, until)
    current = window.rows
    version = served_version(params, current, model_tag)
    model_tag = str(version.tag)
    reference = store.read_reference(version)
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
        summary.update(
            status="not_enough_data",
            drift_detected=False,
            message=f"{len(current)} logged predictions in the window, fewer than "
            f"monitoring.min_rows={m.min_rows}: no verdict",
        )
        log.warning("monitor: %s", summary["message"])
    else:
        embedding = [c for c in reference.columns if c.startswith("emb_")]
        snapshot, drift = build_report(reference, current, embedding, m)
        summary.update(drift)
        summary["status"] = "drift" if drift["drift_detected"] else "no_drift"
        html = layout.drift_report(stamp, ".html")
        with atomic.atomic_path(html) as tmp:
            snapshot.save_html(str(tmp))
        summary["report_html"] = str(html)
    if len(current):
        summary["teacher_agreement"] = teacher_agreement(current, params)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic.write_json(layout.drift_report(stamp, ".json"), summary)
    write_trend(layout.drift_dir, layout.drift_trend, m.drift_share)
    log.info(
        "monitor: %s (%d current rows vs %d reference rows; drifted: %s) -> %s",
        summary["status"],
        len(current),
        len(reference),
        ", ".join(summary.get("drifted_columns", [])) or "none",
        layout.drift_report(stamp, ".json"),
    )
    return summary


def emit_drift_event(summary: dict, params: Params) -> str | None:
    """Emit the Prefect event unless one was emitted within the cool-down; return its id. The
    check and the marker are one step under a lock, so two monitors at once emit one event."""
    layout = Artifacts(params)
    with exclusive(layout.drift_event_lock, wait=True):
        return _emit_after_cooldown(summary, layout.last_drift_event, params.monitoring.event_cooldown_hours)


def _emit_after_cooldown(summary: dict, marker: Path, cooldown: float) -> str | None:
    from prefect.events import emit_event

    now = datetime.now(UTC)
    if marker.is_file():
        last = datetime.fromisoformat(json.loads(marker.read_text())["emitted"])
        if now - last < timedelta(hours=cooldown):
            log.info("drift event suppressed: the last one (%s) is within the %.0f h cool-down", last, cooldown)
            return None
    payload = {
        k: summary[k]
        for k in ("model_tag", "share_drifted_columns", "drifted_columns", "window", "rows_compared", "report_html")
        if k in summary
    }
    event = emit_event(
        event=EVENT, resource={"prefect.resource.id": f"vgg2resnet.model.{summary['model_tag']}"}, payload=payload
    )
    if event is None:
        return None
    atomic.write_json(marker, {"emitted": now.isoformat(), "event_id": str(event.id)})
    log.info("emitted %s (%s)", EVENT, event.id)
    return str(event.id)
