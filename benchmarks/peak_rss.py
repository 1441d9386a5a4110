"""Peak resident memory of a command and every process it starts, for the memory benchmarks."""

from __future__ import annotations

import subprocess
import time

import psutil


def peak_rss(command: list[str], interval_s: float = 0.02, proportional: bool = False, **popen) -> int:
    """The largest summed RSS of `command`'s process tree, sampled every `interval_s`: DataLoader
    workers are separate processes, so the parent's own peak would miss them. A forked worker's
    RSS also counts every page it still shares with its parent; `proportional` sums each
    process's PSS instead (a shared page counts once in all), read from /proc/PID/smaps, which is
    slower to sample. `popen`: subprocess.Popen's keyword arguments (cwd, env, stdout...)."""
    child = subprocess.Popen(command, **popen)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            memory = (p.memory_full_info().pss if proportional else p.memory_info().rss for p in tree if p.is_running())
            peak = max(peak, sum(memory))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(interval_s)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return peak
