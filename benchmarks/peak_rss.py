"""Peak resident memory of a command and every process it starts, for the memory benchmarks."""

from __future__ import annotations

import subprocess
import time

import psutil


def peak_rss(command: list[str], interval_s: float = 0.02) -> int:
    """The largest summed RSS of `command`'s process tree, sampled every `interval_s`: DataLoader
    workers are separate processes, so the parent's own peak would miss them."""
    child = subprocess.Popen(command)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(interval_s)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return peak
