"""Reading the service's inference log (JSON lines from bentoml.monitor), tolerant of bad lines."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class LogWindow:
    rows: pd.DataFrame
    skipped_lines: int
    files: int


def read_inference_log(log_dir: Path, since: datetime, until: datetime | None = None) -> LogWindow:
    """Records logged at or after `since` (and before `until`); corrupt lines are skipped and counted."""
    records, skipped, files = [], 0, 0
    for path in sorted(Path(log_dir).glob("*.log")) if Path(log_dir).is_dir() else []:
        files += 1
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                stamp = pd.Timestamp(record["logged_at"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped += 1
                continue
            if stamp >= pd.Timestamp(since) and (until is None or stamp < pd.Timestamp(until)):
                records.append(record)
    if skipped:
        log.warning("skipped %d unreadable line(s) in %s", skipped, log_dir)
    return LogWindow(pd.DataFrame.from_records(records), skipped, files)
