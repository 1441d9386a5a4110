"""Peak resident memory of a command and every process it starts, for the memory benchmarks."""

from __future__ import annotations

import subprocess
import time

import psutil


def peak_rss(command: list[str], interval_s: float = 0.02, proportional: bool = False, **popen) -> int:
    """The largest summed RSS of `command`'s process tree, sampled every `interval_s`: DataLoader
    workers are separate processes, so the parent's own peak would miss them. A forked worker's
    RSS also counts every page it still shares with its parent; `proportional` sums each
    process's PSS instead (a shared page counts once in all). `popen`: subprocess.Popen's
    keyword arguments (cwd, env, stdout...)."""
    child = subprocess.Popen(command, **popen)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            memory = (_pss(p.pid) if proportional else p.memory_info().rss for p in tree if p.is_running())
            peak = max(peak, sum(memory))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(interval_s)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return peak


def _pss(pid: int) -> int:
    """A process's proportional set size, from the kernel's one-line summary: psutil's
    memory_full_info reads every mapping of /proc/PID/smaps, which takes a core's tenth of a
    second on a process holding PyTorch."""
    with open(f"/proc/{pid}/smaps_rollup") as summary:
        return next(int(line.split()[1]) * 1024 for line in summary if line.startswith("Pss:"))
