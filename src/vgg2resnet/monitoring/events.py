"""The drift event that starts retraining, with a cool-down so one drift episode starts one run."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from vgg2resnet import atomic
from vgg2resnet.config import MonitoringParams

log = logging.getLogger(__name__)
EVENT = "vgg2resnet.drift.detected"


def emit_drift_event(summary: dict, params: MonitoringParams) -> str | None:
    """Emit the Prefect event unless one was emitted within the cool-down; return its id."""
    from prefect.events import emit_event

    marker = params.report_dir / "last_event.json"
    now = datetime.now(timezone.utc)
    if marker.is_file():
        last = datetime.fromisoformat(json.loads(marker.read_text())["emitted"])
        if now - last < timedelta(hours=params.event_cooldown_hours):
            log.info("drift event suppressed: the last one (%s) is within the %.0f h cool-down", last,
                     params.event_cooldown_hours)
            return None
    payload = {k: summary[k] for k in ("model_tag", "share_drifted_columns", "drifted_columns", "window",
                                       "rows_compared", "report_html") if k in summary}
    event = emit_event(event=EVENT, resource={"prefect.resource.id": f"vgg2resnet.model.{summary['model_tag']}"},
                       payload=payload)
    if event is None:
        return None
    atomic.write_json(marker, {"emitted": now.isoformat(), "event_id": str(event.id)})
    log.info("emitted %s (%s)", EVENT, event.id)
    return str(event.id)
