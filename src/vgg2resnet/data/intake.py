"""Reading a scanned ImageFolder into manifest rows: on every core, incrementally, and without
touching the user's files.

- **Parallel.** Hashing and fully decoding an image is the whole cost of `prepare`, and each
  image is independent, so files go to `runtime.num_workers` processes in chunks.
- **Incremental.** The facts of a file (size, mode, dhash, whether it decodes) depend only on
  its bytes, so a file whose SHA-256 the previous manifest already lists reuses that row's
  facts instead of being decoded again. A reused row must also still fit `data.max_pixels`
  and come from a manifest of the same `FACTS_VERSION`; anything else is decoded again.
- **Not even read when unchanged** (`data.reuse_by_stat`). The last run's stat key of each
  source file (size, mtime, ctime, inode, device) and its SHA-256 are kept as local state
  (`SourceStats`, under `paths.state_dir`, so it never changes a DVC output). A file whose
  stat key is the same, and whose content the previous data/raw holds, is not opened. The key
  cannot go stale silently: any write to a file moves its ctime, which no program can set
  back, and a file changed within a timestamp tick of being recorded is not recorded, so a
  write in the same tick is caught too (`vgg2resnet.data.sources.settled`). Any other file
  is read and hashed, so a file edited in place is decoded afresh.
- **Stored once.** Only content the previous data/raw does not hold is sent back from the
  workers and written, into new shards (`vgg2resnet.data.shards`); DVC (`cache.type` in
  `.dvc/config`) links its cache to data/raw, so the images take the user's bytes once more on
  disk, not twice.
- **The user's folder is only read**: opened with O_NOATIME where the system allows it, so
  not even its access times change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.digits import write_digits
from vgg2resnet.data.imagefolder import ScanResult, scan_image_folder, source_root
from vgg2resnet.data.loaders import worker_count
from vgg2resnet.data.manifest import FACTS_VERSION, ImageFacts, image_facts
from vgg2resnet.data.shards import Packer
from vgg2resnet.data.sources import SourceStats, read_source, stat_keys

log = logging.getLogger(__name__)
MAX_LISTED = 20  # files named in a message; the rest are counted
# Files per chunk sent to a worker: large enough that pickling costs little, small enough that
# the new images' bytes in flight (2 chunks per worker) stay small.
CHUNK_FILES = 32

FACT_FIELDS = list(ImageFacts.__dataclass_fields__)
# A row is a tuple of these, not a dict: at 10^6 images a dict per row is 0.5 GB more.
ROW_FIELDS = ["path", "category", *FACT_FIELDS]
SHA256 = ROW_FIELDS.index("sha256")


@dataclass(frozen=True)
class Previous:
    """What the last `prepare` saw: facts by content hash, and the source's stat keys."""

    facts: dict[str, dict]  # sha256 -> the facts of a file that decoded
    stats: SourceStats | None = None  # what the last run saw of the source, to skip reading

    @classmethod
    def none(cls) -> Previous:
        return cls({})

    @classmethod
    def load(cls, manifest: Path, stats: SourceStats | None = None) -> Previous:
        """The previous manifest's facts, or none when there is no readable one; `stats` is
        kept either way, since it also says that this run records stat keys for the next."""
        try:
            frame = pd.read_parquet(manifest, columns=FACT_FIELDS)
        except (OSError, ValueError, KeyError):  # missing, unreadable or from another schema
            return cls({}, stats=stats)
        if frame.attrs.get("facts_version") != FACTS_VERSION:  # facts computed another way
            return cls({}, stats=stats)
        decoded = frame[frame["decodes"]]
        return cls({row["sha256"]: row for row in decoded.to_dict("records")}, stats)


@dataclass(frozen=True)
class Job:
    """One file to read: its path, the path it takes under the root, and its category."""

    path: str
    relative: str
    category: str


@dataclass(frozen=True)
class Reading:
    """The settings every worker shares."""

    max_pixels: int
    stored: frozenset[str]  # contents data/raw holds already: their bytes are not sent back
    skip_undecodable: bool
    previous: Previous


def _known_facts(digest: str, reading: Reading) -> dict | None:
    """The previous manifest's facts for this content, when they still fit data.max_pixels."""
    known = reading.previous.facts.get(digest)
    if known is not None and known["width"] * known["height"] <= reading.max_pixels:
        return dict(known)
    return None


def _facts(payload: bytes, digest: str, reading: Reading) -> dict:
    return _known_facts(digest, reading) or asdict(image_facts(payload, reading.max_pixels))


def _row(job: Job, facts: dict, digest: str) -> tuple:
    return (job.relative, job.category, *(digest if k == "sha256" else facts[k] for k in FACT_FIELDS))


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
        return {"skipped": {"path": job.path, "category": job.category, "error": facts["decode_error"]}}
    result = {"row": _row(job, facts, digest)}
    if digest not in reading.stored:
        result["payload"] = payload  # new content, for the shards
    return result


def _unchanged(job: Job, digest: str, reading: Reading) -> dict | None:
    """The row of a file whose stat key is the one the last run recorded with `digest`, unread;
    None when it must be read (facts not reusable, or data/raw does not hold its content)."""
    if digest not in reading.stored:
        return None
    facts = _known_facts(digest, reading)
    return None if facts is None else _row(job, facts, digest)


def _read_chunk(jobs: list[Job]) -> list[dict]:
    return [_read(job) for job in jobs]


def _results(jobs: list[Job], reading: Reading, workers: int) -> Iterator[dict]:
    """Each job's result, in order. New images come back with their bytes, so no more than a
    window of chunks is in flight (Executor.map would read every file ahead of the packer)."""
    if workers <= 1 or len(jobs) < 2:
        yield from (_read(job, reading) for job in jobs)
        return
    size = max(1, min(CHUNK_FILES, len(jobs) // (workers * 8)))  # several chunks per worker: even cores
    chunks = (jobs[start : start + size] for start in range(0, len(jobs), size))
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(reading,)) as pool:
        pending = deque(pool.submit(_read_chunk, chunk) for chunk in islice(chunks, 2 * workers))
        while pending:
            done = pending.popleft().result()
            pending.extend(pool.submit(_read_chunk, chunk) for chunk in islice(chunks, 1))
            yield from done


@dataclass(frozen=True)
class Intake:
    rows: pd.DataFrame  # manifest rows (ROW_FIELDS)
    skipped: list[dict]  # files left out because they do not decode
    stats: SourceStats | None  # the stat keys to skip reading by next time, when recording them
    unread: int  # files known by their stat key, not read


def read_images(
    scan: ScanResult, reading: Reading, packer: Packer, workers: int = 1, show_progress: bool = True
) -> Intake:
    """The facts of every scanned image, each file read at most once.

    The bytes of each content that reading.stored lacks go into the packer's shards as they
    are read (the source is only read). With reading.skip_undecodable, a file that does not decode is neither
    placed nor listed as a row, but returned among the skipped ones with its full path.
    With reading.previous.stats, a file whose stat key is unchanged is not read at all, and
    the keys of this run are returned for the next; without, no file is even stat'ed."""
    started = time.time_ns()
    root, recorded = str(scan.root), reading.previous.stats
    jobs = [
        Job(os.path.join(root, relative), relative, category)
        for category, files in scan.files.items()
        for relative in files
    ]
    rows, skipped, to_read = [], [], jobs
    if recorded is not None:
        relatives = [job.relative for job in jobs]
        keys = stat_keys(relatives, root)  # taken before reading: a later write moves them
        to_read = []
        for job, digest in zip(jobs, recorded.matching(relatives, keys)):
            row = None if digest is None else _unchanged(job, digest, reading)
            if row is None:
                to_read.append(job)
            else:
                rows.append(row)
    unread = len(rows)
    progress = tqdm(
        _results(to_read, reading, workers),
        total=len(jobs),
        initial=unread,
        desc="prepare",
        unit="img",
        disable=not show_progress,
        mininterval=2.0,
    )
    for result in progress:
        if "row" in result:
            rows.append(result["row"])
            if "payload" in result:
                packer.add(result["row"][0], result["payload"], result["row"][SHA256])
        else:
            skipped.append(result["skipped"])
    rows = pd.DataFrame.from_records(rows, columns=ROW_FIELDS)
    if recorded is None:
        return Intake(rows, skipped, None, unread)
    paths = rows["path"].to_numpy(dtype=object)
    stats = SourceStats.settled_of(
        recorded.root,
        paths,
        keys[pd.Index(relatives).get_indexer(paths)],
        rows["sha256"].to_numpy(dtype=object),
        started,
    )
    return Intake(rows, skipped, stats, unread)


def undecodable_error(broken: list[tuple[Path, str]]) -> UserError:
    listed = [f"  {path}: {error}" for path, error in broken]
    more = f"\n  ... and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
    return UserError(
        f"{len(broken)} file(s) with an image extension do not decode:\n"
        + "\n".join(listed[:MAX_LISTED])
        + more
        + "\nremove or replace them, or set data.on_undecodable in params.yaml to 'skip' (train without them; "
        "validation lists them) or 'record' (validation fails on them)"
    )


def import_source(params: Params, packer: Packer) -> tuple[ScanResult, Intake]:
    """Read the source's images, their new contents into the packer; return the scan and what was read."""
    data, layout = params.data, Artifacts(params)
    skip = data.on_undecodable == "skip"
    workers = worker_count(params.runtime)
    stored = packer.stored()
    if data.source == "demo":
        with tempfile.TemporaryDirectory(prefix=".demo.", dir=packer.into.parent) as folder:
            count = write_digits(Path(folder), data.demo_image_size)
            log.info("demo data set: %d digit images at %d px", count, data.demo_image_size)
            scan = scan_image_folder(Path(folder))
            reading = Reading(data.max_pixels, stored, skip, Previous.none())
            return scan, read_images(scan, reading, packer, workers)
    source = source_root(data)
    raw_dir = data.raw_dir
    if source.resolve() == raw_dir.resolve() or raw_dir.resolve() in source.resolve().parents:
        raise UserError(
            f"data.source ({source}) lies inside data.raw_dir ({raw_dir}), which this stage rebuilds; "
            "keep your originals elsewhere and point data.source at them"
        )
    scan = scan_image_folder(source, data.follow_external_links)
    total = sum(len(files) for files in scan.files.values())
    stats = SourceStats.load(layout.source_stats, source) if data.reuse_by_stat else None
    previous = Previous.load(layout.manifest, stats)
    log.info(
        "reading %d images from %s (your folder is only read) into %s with %d worker(s); "
        "%d known from the previous manifest, %d held by the previous shards",
        total,
        source,
        raw_dir,
        workers,
        len(previous.facts),
        len(stored),
    )
    intake = read_images(scan, Reading(data.max_pixels, stored, skip, previous), packer, workers)
    if stats is not None:
        log.info(
            "%d of %d images unchanged since the last run (size, mtime, ctime, inode): not read again",
            intake.unread,
            total,
        )
    return scan, intake
