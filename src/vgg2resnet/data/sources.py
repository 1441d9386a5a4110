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
write inside one timestamp tick is not missed. The records hold a digest, not the listing, so
that they stay a few lines in git at a million files. The user's files are only read, with
O_NOATIME where the system allows it.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.imagefolder import scan_image_folder, source_root

StatKey = tuple[int, int, int, int, int]
STAT_FIELDS = ["size", "mtime_ns", "ctime_ns", "ino", "dev"]
# Timestamps advance in ticks (a few ms on ext4, 2 s on FAT), so a file written in the tick it
# was recorded in could change without moving them; such a file is read again next time.
RACY_WINDOW_NS = 2_000_000_000
HASH_SLICE = 4096  # files hashed per batch of threads
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
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError):
            frame = None
        if (
            frame is None
            or frame.attrs.get("root") != resolved
            or list(frame.columns) != ["path", *STAT_FIELDS, "sha256"]
        ):
            return cls.of(resolved, [], np.empty((0, len(STAT_FIELDS))), np.empty(0))
        return cls.of(resolved, frame["path"].to_numpy(), frame[STAT_FIELDS].to_numpy(), frame["sha256"].to_numpy())

    def save(self, path: Path) -> None:
        frame = pd.DataFrame(
            {"path": self.paths.to_numpy(), **dict(zip(STAT_FIELDS, self.keys.T)), "sha256": self.sha256}
        )
        frame.attrs["root"] = self.root
        frame.to_parquet(path, index=False)

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

    def same_as(self, other: SourceStats | None) -> bool:
        return (
            other is not None
            and self.root == other.root
            and self.paths.equals(other.paths)
            and np.array_equal(self.keys, other.keys)
            and np.array_equal(self.sha256, other.sha256)
        )


def stat_keys(paths: list[str], root: str) -> np.ndarray:
    """The stat key of every path under root, as a (files, 5) int64 array."""
    keys = np.empty((len(paths), len(STAT_FIELDS)), dtype=np.int64)
    for i, relative in enumerate(paths):
        keys[i] = stat_key(os.path.join(root, relative))
    return keys


def content_hashes(root: str, paths: list[str], known: SourceStats | None) -> tuple[list[str], SourceStats | None]:
    """The SHA-256 of each file (a path under root), in the order given. With `known` (the last
    run's stat keys), a file whose stat key is the one recorded is not read; the keys to record
    for the next run are returned, for the files whose key is settled."""
    started = time.time_ns()
    keys = stat_keys(paths, root)
    digests = known.matching(paths, keys) if known is not None else np.full(len(paths), None, dtype=object)
    unknown = [i for i, digest in enumerate(digests) if digest is None]
    # hashlib and file reads release the GIL: threads hash on every core. In slices, because the
    # executor keeps a future (about a kilobyte) for every file submitted at once.
    with ThreadPoolExecutor() as pool:
        for start in range(0, len(unknown), HASH_SLICE):
            part = unknown[start : start + HASH_SLICE]
            digests[part] = list(pool.map(content_sha256, [os.path.join(root, paths[i]) for i in part]))
    if known is None:
        return list(digests), None
    return list(digests), SourceStats.settled_of(known.root, paths, keys, digests, started)


class SourceHashes:
    """The content hashes a `sources` run takes, kept by stat key between runs (`data.reuse_by_stat`)
    in `folder` (local state): the user's images by their path under data.source, and single
    files by their resolved path."""

    def __init__(self, folder: Path, by_stat: bool) -> None:
        self.folder, self.by_stat = Path(folder), by_stat
        self.saved: dict[str, SourceStats] = {}

    def _hash(self, kind: str, root: Path, paths: list[str]) -> list[str]:
        known = SourceStats.load(self.folder / f"{kind}.parquet", root) if self.by_stat else None
        hashes, stats = content_hashes(str(root), paths, known)
        if stats is not None and not stats.same_as(known):
            self.saved[kind] = stats
        return hashes

    def images(self, root: Path, relatives: list[str]) -> list[str]:
        """The SHA-256 of each image, a path under root, in the order given."""
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
        return {"path": str(given), "sha256": self._hash(f"file-{setting}", resolved.parent, [resolved.name])[0]}

    def save(self) -> None:
        for kind, stats in self.saved.items():
            with atomic.atomic_path(self.folder / f"{kind}.parquet") as tmp:
                stats.save(tmp)


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
