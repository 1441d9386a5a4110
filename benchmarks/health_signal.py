"""The teacher-agreement health signal under shift: clean traffic, then blurred and noisy traffic,
each window judged by `monitor` against the test-split agreement, with the alert it raises.

    python benchmarks/health_signal.py --requests 200 --severities 3 5

Runs by hand (not in CI) after `dvc repro`: serves the promoted model on 127.0.0.1 with
monitoring.retain_fraction 1 (a copy of params.yaml; yours is not changed), so every served
image is kept for the teacher to re-classify, and prints what the kept images cost on disk.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.monitor import run_monitor
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store
from vgg2resnet.serving.server import local_server


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="images per window")
    parser.add_argument("--severities", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--corruptions", nargs="+", default=["blur", "noise"])
    args = parser.parse_args()

    root = Path.cwd()
    settings = yaml.safe_load((root / "params.yaml").read_text())
    settings["monitoring"]["retain_fraction"] = 1.0
    with tempfile.TemporaryDirectory() as scratch:
        params_file = Path(scratch) / "params.yaml"
        params_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        params = load_params(params_file)
        tag = str(store.current(params.serving.model_name).tag)
        kept_before = disk_bytes(root / params.monitoring.retained_dir)
        sent = 0
        with local_server(tag, cwd=root, project_root=root, params_file=params_file) as url:
            m = params.monitoring
            print(
                f"serving {tag}; alert when even the upper {m.agreement_confidence:.0%} bound of a window's "
                f"agreement is more than {m.max_agreement_drop:g} pt below the test split's"
            )
            print(
                f"{'window':10s} {'severity':>8s} {'images':>6s} {'agreement':>9s} {'upper':>6s} "
                f"{'test split':>10s} {'drop pt':>7s} {'alert':>5s}"
            )
            windows = [("clean", 0)] + [(c, s) for c in args.corruptions for s in args.severities]
            for name, severity in windows:
                since = datetime.now(UTC)
                send_traffic(params, url, args.requests, None if name == "clean" else name, severity or 3)
                sent += args.requests
                health = run_monitor(params, since=since)["teacher_agreement"]
                print(
                    f"{name:10s} {severity:8d} {health['sampled']:6d} {health['agreement']:8.1f}% "
                    f"{health['agreement_upper_bound']:5.1f}% {health['test_split_agreement']:9.1f}% "
                    f"{health['drop']:7.1f} {health['alert']!s:>5s}"
                )
        kept = disk_bytes(root / params.monitoring.retained_dir) - kept_before
        print(
            f"retained images: {kept / 1e6:.2f} MB for {sent} requests, "
            f"{kept / sent * 1000 / 1e6:.2f} MB per 1,000 at retain_fraction 1 "
            f"(under {params.monitoring.retained_dir})"
        )
