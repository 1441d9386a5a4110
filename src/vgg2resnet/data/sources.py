"""The files the pipeline reads from outside the repository, and the records through which DVC
sees them change.

DVC hashes the files inside the repository that a stage depends on. It does not look at the
user's image folder (`data.source`), nor at a teacher checkpoint, categories file or
pretrained weights given by a path. So the `sources` stage, which dvc.yaml marks
`always_changed` (DVC runs it on every `dvc repro`), writes one small JSON record for each stage
that reads such files (`SOURCE_RECORDS`), and that stage depends on its record. A record holds
content hashes, so it changes exactly when the bytes its stage reads changed, and DVC reruns
the stage then, and only then:

- `images.json` (prepare): one digest over every image's path under the folder and SHA-256,
  and the categories file's hash. Adding, changing, renaming or removing an image changes it;
  touching or copying the folder does not.
- `teacher.json` (teacher) and `student.json` (distill): the hashes of the files given by path.

Hashing is paid once per new or changed file: each hash is kept with the file's stat key (size,
mtime, ctime, inode, device) in local state (`paths.state_dir`, like `prepare`'s own), and a
file whose key is the one recorded is not read again (`data.reuse_by_stat`). Finding a
folder unchanged costs a stat per file. A key is recorded only once settled (`settled`), so a
write inside one timestamp tick is not missed. The keys are recorded in the order a scan lists
the files, so a run reads the last run's keys alongside its own scan, a batch at a time, and
writes its own as it goes: its memory holds the scan's paths and no table of every file's key
and hash. The records hold a digest, not the listing, so
that they stay a few lines in git at a million files. The user's files are only read, with
O_NOATIME where the system allows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vgg2resnet import atomic
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.imagefolder import scan_image_folder, scan_order, source_root

StatKey = tuple[int, int, int, int, int]
STAT_FIELDS = ["size", "mtime_ns", "ctime_ns", "ino", "dev"]
# Timestamps advance in ticks (a few ms on ext4, 2 s on FAT), so a file written in the tick it
# was recorded in could change without moving them; such a file is read again next time.
RACY_WINDOW_NS = 2_000_000_000
BATCH_FILES = 4096  # files stat'ed, looked up and hashed at a time: the memory taken stays flat in their number
# The record each stage that reads outside files depends on: stage -> record name.
SOURCE_RECORDS = {"prepare": "images", "teacher": "teacher", "distill": "student"}


def stat_key(path: str | Path) -> StatKey:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def settled(keys: np.ndarray, started_ns: int) -> np.ndarray:
    """Which stat keys (rows of a (files, 5) array) taken during a run that started at started_ns
    may be trusted next time: any write to a file moves its ctime, which no program can set
    back, so a key whose times lie before that tick cannot go stale silently (git's "racy
    clean" rule)."""
    return np.maximum(keys[:, 1], keys[:, 2]) < started_ns - RACY_WINDOW_NS


def open_source(path: str | Path) -> BinaryIO:
    """A user's file opened for reading without updating its access time where the OS permits it
    (Linux, for the file's owner or root); elsewhere a plain open, which may update it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    return os.fdopen(fd, "rb")


def read_source(path: str | Path) -> bytes:
    with open_source(path) as handle:
        return handle.read()


def content_sha256(path: str | Path) -> str:
    with open_source(path) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _state_schema(root: str) -> pa.Schema:
    """The columns of recorded stat keys, with the folder they were taken under."""
    fields = [("path", pa.string()), *((name, pa.int64()) for name in STAT_FIELDS), ("sha256", pa.string())]
    return pa.schema(fields, metadata={"root": root})


def _state_file(path: Path, root: str) -> pq.ParquetFile | None:
    """The recorded stat keys at path, or None when the file is missing, unreadable or of another root."""
    try:
        recorded = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        return None
    return recorded if recorded.schema_arrow.equals(_state_schema(root), check_metadata=True) else None


@dataclass(frozen=True, eq=False)
class SourceStats:
    """Each source file's stat key and SHA-256 as a run saw them, by path under `root`, held as
    columns (a million files take tens of MB, where a dict of tuples took gigabytes)."""

    root: str  # the folder, resolved: a key from another folder is never looked at
    paths: pd.Index  # path under root, unique
    keys: np.ndarray  # (files, 5) int64: STAT_FIELDS
    sha256: np.ndarray  # (files,) str

    @classmethod
    def of(cls, root: str, paths: list[str], keys: np.ndarray, sha256: np.ndarray) -> SourceStats:
        return cls(
            root,
            pd.Index(paths, dtype=object),
            np.asarray(keys, dtype=np.int64).reshape(-1, len(STAT_FIELDS)),
            np.asarray(sha256, dtype=object),
        )

    @classmethod
    def settled_of(
        cls, root: str, paths: list[str], keys: np.ndarray, sha256: np.ndarray, started_ns: int
    ) -> SourceStats:
        """What to record for next time of a run started at started_ns: the files whose key is settled."""
        keep = settled(keys, started_ns)
        return cls.of(root, [path for path, kept in zip(paths, keep) if kept], keys[keep], np.asarray(sha256)[keep])

    @classmethod
    def load(cls, path: Path, root: Path) -> SourceStats:
        """The recorded keys for this root, or none when the file is missing or for another root."""
        resolved = str(Path(root).resolve())
        recorded = _state_file(path, resolved)
        if recorded is None:
            return cls.of(resolved, [], np.empty((0, len(STAT_FIELDS))), np.empty(0))
        table = recorded.read()
        keys = np.column_stack([table[name].to_numpy() for name in STAT_FIELDS])
        return cls.of(resolved, table["path"].to_pylist(), keys, table["sha256"].to_numpy(zero_copy_only=False))

    def save(self, path: Path) -> None:
        columns = [self.paths.to_numpy(), *self.keys.T, self.sha256]
        pq.write_table(pa.Table.from_arrays(columns, schema=_state_schema(self.root)), path)

    def __len__(self) -> int:
        return len(self.paths)

    def matching(self, paths: list[str], keys: np.ndarray) -> np.ndarray:
        """For each path, its recorded SHA-256 when its recorded key equals `keys`' row, else None."""
        digests = np.full(len(paths), None, dtype=object)
        if not len(self.paths) or not len(paths):
            return digests
        found = self.paths.get_indexer(paths)
        hit = np.flatnonzero(found >= 0)
        same = hit[(self.keys[found[hit]] == keys[hit]).all(axis=1)]
        digests[same] = self.sha256[found[same]]
        return digests


def stat_keys(paths: list[str], root: str) -> np.ndarray:
    """The stat key of every path under root, as a (files, 5) int64 array."""
    keys = np.empty((len(paths), len(STAT_FIELDS)), dtype=np.int64)
    for i, relative in enumerate(paths):
        keys[i] = stat_key(os.path.join(root, relative))
    return keys


class _Recorded:
    """The last run's keys, read a batch at a time in the order they were written, which is the
    order in which a scan lists the files: looking them up in that order merges the two lists,
    so neither is ever held whole. A file looked up out of order is not found (and read again)."""

    def __init__(self, recorded: pq.ParquetFile | None) -> None:
        self.rows = self._rows(recorded) if recorded is not None else iter(())
        self.head = next(self.rows, None)

    @staticmethod
    def _rows(recorded: pq.ParquetFile) -> Iterator[tuple[str, tuple, str]]:
        for batch in recorded.iter_batches(BATCH_FILES):
            columns = batch.to_pydict()
            yield from zip(columns["path"], zip(*(columns[name] for name in STAT_FIELDS)), columns["sha256"])

    def digest(self, relative: str, key: tuple) -> str | None:
        """The recorded SHA-256 of relative when its recorded key is `key`, else None."""
        order = scan_order(relative)
        while self.head is not None and scan_order(self.head[0]) < order:
            self.head = next(self.rows, None)
        if self.head is None or self.head[0] != relative:
            return None
        _, recorded_key, sha256 = self.head
        self.head = next(self.rows, None)
        return sha256 if recorded_key == key else None


class SourceHashes:
    """The content hashes a `sources` run takes, kept by stat key between runs (`data.reuse_by_stat`)
    in `folder` (local state): the user's images by their path under data.source, and single
    files by their resolved path. The keys are streamed to temporary files beside the state, which
    `save` puts in its place and leaving the `with` block otherwise removes."""

    def __init__(self, folder: Path, by_stat: bool) -> None:
        self.folder, self.by_stat = Path(folder), by_stat
        self.pending = contextlib.ExitStack()

    def __enter__(self) -> SourceHashes:
        return self

    def __exit__(self, *failure) -> None:
        self.pending.__exit__(*failure)

    def _hash(self, kind: str, root: Path, relatives: Iterable[str]) -> Iterator[str]:
        """The SHA-256 of each file (a path under root, in scan order), as it is taken."""
        started, root = time.time_ns(), str(root)
        target, schema = self.folder / f"{kind}.parquet", _state_schema(root)
        recorded = _Recorded(_state_file(target, root) if self.by_stat else None)
        if self.by_stat:
            tmp = self.pending.enter_context(atomic.atomic_path(target))
            writer = self.pending.enter_context(pq.ParquetWriter(tmp, schema))
        relatives = iter(relatives)
        # hashlib and file reads release the GIL: threads hash on every core.
        with ThreadPoolExecutor() as pool:
            while batch := list(islice(relatives, BATCH_FILES)):
                keys = stat_keys(batch, root)
                digests = [recorded.digest(path, tuple(key)) for path, key in zip(batch, keys.tolist())]
                unknown = [i for i, digest in enumerate(digests) if digest is None]
                read = pool.map(content_sha256, [os.path.join(root, batch[i]) for i in unknown])
                for i, digest in zip(unknown, read):
                    digests[i] = digest
                if self.by_stat:
                    keep = settled(keys, started)
                    paths = [path for path, kept in zip(batch, keep) if kept]
                    columns = [paths, *keys[keep].T, np.asarray(digests)[keep]]
                    writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                yield from digests

    def images(self, root: Path, relatives: Iterable[str]) -> Iterator[str]:
        """The SHA-256 of each image, a path under root in scan order, as it is taken."""
        return self._hash("images", root, relatives)

    def file(self, setting: str, given: Path | None) -> dict | None:
        """{path, sha256} of the file a setting names (None when unset); a missing file is a UserError."""
        if given is None:
            return None
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(
                f"{setting}: {path} is not a file; set {setting} in params.yaml to an existing "
                "file (a path relative to the project, or absolute), or to null"
            )
        resolved = path.resolve()
        [sha256] = self._hash(f"file-{setting}", resolved.parent, [resolved.name])
        return {"path": str(given), "sha256": sha256}

    def save(self) -> None:
        """Record this run's keys for the next."""
        self.pending.close()


def images_record(params: Params, hashes: SourceHashes) -> dict:
    """What `prepare` reads from the user's folder: the digest of every image's path and content."""
    data = params.data
    if data.source == "demo":
        return {"source": "demo"}
    root = source_root(data)
    relatives = [
        relative for files in scan_image_folder(root, data.follow_external_links).files.values() for relative in files
    ]
    digest = hashlib.sha256()
    for relative, sha in zip(relatives, hashes.images(root, relatives)):
        digest.update(f"{relative}\t{sha}\n".encode())
    return {"source": data.source, "images": len(relatives), "sha256": digest.hexdigest()}


def source_records(params: Params, hashes: SourceHashes) -> dict[str, dict]:
    """Every record, by name (`SOURCE_RECORDS`)."""
    teacher, distill = params.teacher, params.distill
    categories = hashes.file("teacher.categories_file", teacher.categories_file)
    return {
        "images": {**images_record(params, hashes), "categories_file": categories},
        "teacher": {
            "checkpoint": hashes.file("teacher.checkpoint", teacher.checkpoint),
            "categories_file": categories,
            "pretrained_weights": hashes.file("teacher.pretrained_weights", teacher.pretrained_weights),
        },
        "student": {"pretrained_weights": hashes.file("distill.pretrained_weights", distill.pretrained_weights)},
    }
