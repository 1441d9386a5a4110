"""`vgg2resnet demo`: the whole loop on the promoted model after `dvc repro`: serve it on
127.0.0.1, send clean then drifted traffic, run the monitor after each, stop the server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.monitoring.monitor import run_monitor
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store
from vgg2resnet.serving.server import local_server

log = logging.getLogger(__name__)


def run_demo(params: Params, params_file: Path, corruption: str = "brightness", severity: int = 5) -> dict:
    promoted = store.current(params.serving.model_name)
    if promoted is None:
        raise UserError("no promoted model in the BentoML store: run `dvc repro` first")
    root = Path.cwd()
    phases = {}
    log.info("serving %s on 127.0.0.1 ...", promoted.tag)
    with local_server(str(promoted.tag), cwd=root, project_root=root, params_file=params_file) as url:
        log.info("service ready at %s", url)
        for name, damage in (("clean", None), ("drifted", corruption)):
            since = datetime.now(UTC)
            send_traffic(params, url, params.monitoring.traffic_requests, damage, severity)
            summary = run_monitor(params, since=since)
            phases[name] = {
                k: summary.get(k)
                for k in ("status", "drift_detected", "share_drifted_columns", "drifted_columns", "report_html")
            }
    for name, phase in phases.items():
        log.info(
            "%s traffic: %s, drifted columns %s, report %s",
            name,
            phase["status"],
            phase["drifted_columns"],
            phase["report_html"],
        )
    return {"model_tag": str(promoted.tag), **phases, "trend": str(Artifacts(params).drift_trend)}
