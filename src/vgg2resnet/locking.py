"""One run at a time per project.

`dvc repro` holds DVC's lock, but a stage command typed by hand, a Prefect flow run and a
worker's run on its clone do not, and two of them at once would write the same checkpoints,
reports and model store versions over each other. Each takes the project's run lock
(`Artifacts.run_lock`); a second run stops at once with a message naming the run that holds
it. The lock is an OS file lock (filelock), released when its process ends, however it ends:
a crash leaves nothing to clean up.

A run that holds the lock passes it down to the processes it starts (a flow's `dvc repro`
and the stage commands DVC runs) through VGG2RESNET_LOCKS, so they do not wait on their own
parent. A short critical section, such as the monitor's cool-down check, waits for the lock
instead (`wait=True`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from vgg2resnet.config import UserError

HELD = "VGG2RESNET_LOCKS"  # lock files an ancestor process holds, os.pathsep-separated
# Read once, as this process was started: what this process itself sets is for its children,
# not for its own threads, which must still wait for each other.
INHERITED = frozenset(path for path in os.environ.get(HELD, "").split(os.pathsep) if path)


def _announce(path: str, held: bool) -> None:
    """Add the lock to, or take it from, what this process's children inherit."""
    paths = [entry for entry in os.environ.get(HELD, "").split(os.pathsep) if entry and entry != path]
    paths += [path] if held else []
    if paths:
        os.environ[HELD] = os.pathsep.join(paths)
    else:
        os.environ.pop(HELD, None)


@contextlib.contextmanager
def exclusive(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold the lock file `path` for the block: wait for it, or (by default) stop with a
    UserError naming its holder when another process has it."""
    path = Path(path).resolve()
    if str(path) in INHERITED:  # taken by the run that started this process
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = path.with_name(path.name + ".holder")  # beside the lock: acquiring truncates the lock file
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        said = holder.read_text().strip() if holder.is_file() else "another process"
        raise UserError(
            f"{said} is running in this project (it holds {path}); wait for it to finish, then run "
            "this again. The lock goes with its process, so a crashed run never holds it"
        ) from None
    try:
        holder.write_text(
            f"{' '.join(sys.argv)} (pid {os.getpid()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC)\n"
        )
        _announce(str(path), held=True)
        try:
            yield
        finally:
            _announce(str(path), held=False)
    finally:
        lock.release()
