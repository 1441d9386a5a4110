"""Drift sensitivity: for each corruption and severity, is drift detected and at what share?
Also times a monitor run over --rows logged predictions.

    python benchmarks/drift_sensitivity.py --severities 1 3 5 --requests 200 --rows 1000

Runs by hand (not in CI) after `dvc repro`: serves the promoted model on 127.0.0.1 (the
inference log goes to ./monitoring), sends traffic phase by phase and runs the monitor on
each phase's window.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.monitor import run_monitor
from vgg2resnet.monitoring.traffic import CORRUPTIONS, send_traffic
from vgg2resnet.packaging import store
from vgg2resnet.serving.server import local_server

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1000, help="rows for the timed monitor run")
    args = parser.parse_args()

    params = load_params()
    root = Path.cwd()
    tag = str(store.current(params.serving.model_name).tag)
    with local_server(tag, cwd=root, project_root=root, params_file=root / "params.yaml") as url:
        print(f"{'corruption':12s} {'severity':>8s} {'drift':>6s} {'share':>6s}  drifted columns")
        for name, severity in [("clean", 0)] + [(c, s) for c in CORRUPTIONS for s in args.severities]:
            since = datetime.now(UTC)
            send_traffic(params, url, args.requests, None if name == "clean" else name, severity or 3)
            summary = run_monitor(params, since=since)
            print(
                f"{name:12s} {severity:8d} {summary['drift_detected']!s:>6s} "
                f"{summary['share_drifted_columns']:6.2f}  {', '.join(summary['drifted_columns']) or '-'}"
            )
        since = datetime.now(UTC)
        send_traffic(params, url, args.rows)
        start = time.perf_counter()
        summary = run_monitor(params, since=since)
        print(
            f"monitor run over {summary['rows_compared']['current']} logged rows: "
            f"{time.perf_counter() - start:.1f} s (report and summary included)"
        )
