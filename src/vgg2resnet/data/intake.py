"""Reading a scanned ImageFolder into manifest rows: on every core, incrementally, and without
touching the user's files.

- **Parallel.** Hashing and fully decoding an image is the whole cost of `prepare`, and each
  image is independent, so files go to `runtime.num_workers` processes in chunks.
- **Incremental.** The facts of a file (size, mode, dhash, whether it decodes) depend only on
  its bytes, so a file whose SHA-256 the previous manifest already lists reuses that row's
  facts instead of being decoded again. The key is the content hash, read from the file each
  time: a file edited in place, even with its size and timestamp kept, is decoded afresh.
  A reused row must also still fit `data.max_pixels` and come from a manifest of the same
  `FACTS_VERSION`; anything else is decoded again.
- **Copied once.** A file `data/raw` already holds with the same content is linked from there
  into the next `data/raw`, not written again, and DVC (`cache.type` in `.dvc/config`) links
  its cache to `data/raw`: the images take the user's bytes once more on disk, not twice.
- **The user's folder is only read**: opened with O_NOATIME where the system allows it, so
  not even its access times change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vgg2resnet.data.imagefolder import ScanResult
from vgg2resnet.data.manifest import FACTS_VERSION, ImageFacts, image_facts

FACT_FIELDS = list(ImageFacts.__dataclass_fields__)


@dataclass(frozen=True)
class Previous:
    """What the last `prepare` wrote: facts by content hash, and which data/raw file holds what."""

    facts: dict[str, dict]  # sha256 -> the facts of a file that decoded
    raw_dir: Path | None = None  # the data/raw those rows describe, when it is still there
    raw_sha: dict[str, str] | None = None  # relative path -> sha256 in that data/raw

    @classmethod
    def none(cls) -> Previous:
        return cls({})

    @classmethod
    def load(cls, manifest: Path, raw_dir: Path) -> Previous:
        """The previous manifest's facts, or none when there is no readable one."""
        try:
            frame = pd.read_parquet(manifest, columns=["path", *FACT_FIELDS])
        except (OSError, ValueError, KeyError):  # missing, unreadable or from another schema
            return cls.none()
        if frame.attrs.get("facts_version") != FACTS_VERSION:  # facts computed another way
            return cls.none()
        decoded = frame[frame["decodes"]]
        facts = {row["sha256"]: {k: row[k] for k in FACT_FIELDS} for row in decoded.to_dict("records")}
        return cls(facts, raw_dir if raw_dir.is_dir() else None, dict(zip(frame["path"], frame["sha256"])))


@dataclass(frozen=True)
class Job:
    """One file to read: its path, the path it takes under the root, and its category."""

    path: Path
    relative: str
    category: str


@dataclass(frozen=True)
class Reading:
    """The settings every worker shares."""

    max_pixels: int
    copy_to: Path | None
    skip_undecodable: bool
    previous: Previous


def read_source(path: Path) -> bytes:
    """The file's bytes, read without updating its access time where the OS permits it (Linux,
    for the file's owner or root); elsewhere a plain read, which may update it."""
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _facts(payload: bytes, digest: str, reading: Reading) -> dict:
    known = reading.previous.facts.get(digest)
    if known is not None and known["width"] * known["height"] <= reading.max_pixels:
        return dict(known)
    return asdict(image_facts(payload, reading.max_pixels))


def _place(payload: bytes, digest: str, relative: str, reading: Reading) -> None:
    """Put the file under copy_to: a link to the previous data/raw's identical file, else its bytes."""
    target = reading.copy_to / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = reading.previous
    if previous.raw_dir is not None and previous.raw_sha.get(relative) == digest:
        source = previous.raw_dir / relative
        try:
            if source.stat().st_size == len(payload):
                os.link(source, target)
                return
        except OSError:  # gone, or another file system: write it
            pass
    target.write_bytes(payload)


_READING: Reading | None = None


def _start_worker(reading: Reading) -> None:
    global _READING
    _READING = reading


def _read(job: Job, reading: Reading | None = None) -> dict:
    reading = reading or _READING
    payload = read_source(job.path)
    digest = hashlib.sha256(payload).hexdigest()
    facts = _facts(payload, digest, reading)
    if not facts["decodes"] and reading.skip_undecodable:
        return {"skipped": {"path": str(job.path), "category": job.category, "error": facts["decode_error"]}}
    if reading.copy_to is not None:
        _place(payload, digest, job.relative, reading)
    return {"row": {"path": job.relative, "category": job.category, **facts, "sha256": digest}}


def _results(jobs: list[Job], reading: Reading, workers: int) -> Iterator[dict]:
    if workers <= 1 or len(jobs) < 2:
        yield from (_read(job, reading) for job in jobs)
        return
    # Big chunks keep the pickling overhead small; several per worker keep the cores even.
    chunk = max(1, min(256, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(reading,)) as pool:
        yield from pool.map(_read, jobs, chunksize=chunk)


def read_images(scan: ScanResult, root: Path, reading: Reading, workers: int = 1,
                show_progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(manifest rows, skipped files): the facts of every scanned image, each file read once.

    With reading.copy_to, the file is also placed there under its path relative to root (the
    source is only read). With reading.skip_undecodable, a file that does not decode is neither
    placed nor listed as a row, but returned among the skipped ones with its path under root."""
    jobs = [Job(path, path.relative_to(root).as_posix(), category)
            for category, paths in scan.files.items() for path in paths]
    rows, skipped = [], []
    progress = tqdm(_results(jobs, reading, workers), total=len(jobs), desc="prepare", unit="img",
                    disable=not show_progress, mininterval=2.0)
    for result in progress:
        if "row" in result:
            rows.append(result["row"])
        else:
            skipped.append(result["skipped"])
    return rows, skipped
