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

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.imagefolder import scan_image_folder, source_root

StatKey = tuple[int, int, int, int, int]
STAT_FIELDS = ["size", "mtime_ns", "ctime_ns", "ino", "dev"]
# Timestamps advance in ticks (a few ms on ext4, 2 s on FAT), so a file written in the tick it
# was recorded in could change without moving them; such a file is read again next time.
RACY_WINDOW_NS = 2_000_000_000
# The record each stage that reads outside files depends on: stage -> record name.
SOURCE_RECORDS = {"prepare": "images", "teacher": "teacher", "distill": "student"}


def stat_key(path: str | Path) -> StatKey:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def settled(key: StatKey, started_ns: int) -> bool:
    """Whether a key taken during a run that started at started_ns may be trusted next time: any
    write to the file moves its ctime, which no program can set back, so a key whose times lie
    before that tick cannot go stale silently (git's "racy clean" rule)."""
    return max(key[1], key[2]) < started_ns - RACY_WINDOW_NS


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


@dataclass(frozen=True)
class SourceStats:
    """Each source file's stat key and SHA-256 as a run saw them, by path under `root`."""

    root: str  # the folder, resolved: a key from another folder is never looked at
    entries: dict[str, tuple[StatKey, str]]

    @classmethod
    def load(cls, path: Path, root: Path) -> SourceStats:
        """The recorded keys for this root, or none when the file is missing or for another root."""
        empty = cls(str(Path(root).resolve()), {})
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError):
            return empty
        if frame.attrs.get("root") != empty.root or list(frame.columns) != ["path", *STAT_FIELDS, "sha256"]:
            return empty
        return cls(empty.root, {row[0]: (tuple(row[1:6]), row[6]) for row in frame.itertuples(index=False)})

    def save(self, path: Path) -> None:
        frame = pd.DataFrame([(rel, *key, sha) for rel, (key, sha) in self.entries.items()],
                             columns=["path", *STAT_FIELDS, "sha256"])
        frame.attrs["root"] = self.root
        frame.to_parquet(path, index=False)


def content_hashes(paths: dict[str, str], known: SourceStats | None) -> tuple[dict[str, str], SourceStats | None]:
    """The SHA-256 of each file (name -> path), in the order given. With `known` (the last run's
    stat keys), a file whose stat key is the one recorded is not read; the keys to record for
    the next run are returned, for the files whose key is settled."""
    started = time.time_ns()
    keys = {name: stat_key(path) for name, path in paths.items()}
    recorded = known.entries if known is not None else {}
    reused = {name: recorded[name][1] for name, key in keys.items()
              if name in recorded and recorded[name][0] == key}
    unknown = [name for name in paths if name not in reused]
    # hashlib and file reads release the GIL: threads hash on every core.
    with ThreadPoolExecutor() as pool:
        read = dict(zip(unknown, pool.map(content_sha256, [paths[name] for name in unknown])))
    hashes = {name: reused[name] if name in reused else read[name] for name in paths}
    if known is None:
        return hashes, None
    return hashes, SourceStats(known.root, {name: (keys[name], hashes[name]) for name in paths
                                            if settled(keys[name], started)})


class SourceHashes:
    """The content hashes a `sources` run takes, kept by stat key between runs (`data.reuse_by_stat`)
    in `folder` (local state): the user's images by their path under data.source, and single
    files by their resolved path."""

    def __init__(self, folder: Path, by_stat: bool) -> None:
        self.folder, self.by_stat = Path(folder), by_stat
        self.saved: dict[str, SourceStats] = {}

    def _hash(self, kind: str, root: Path, paths: dict[str, str]) -> dict[str, str]:
        known = SourceStats.load(self.folder / f"{kind}.parquet", root) if self.by_stat else None
        hashes, stats = content_hashes(paths, known)
        if stats is not None and stats != known:
            self.saved[kind] = stats
        return hashes

    def images(self, root: Path, relatives: list[str]) -> dict[str, str]:
        return self._hash("images", root, {relative: os.path.join(root, relative) for relative in relatives})

    def file(self, setting: str, given: Path | None) -> dict | None:
        """{path, sha256} of the file a setting names (None when unset); a missing file is a UserError."""
        if given is None:
            return None
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"{setting}: {path} is not a file; set {setting} in params.yaml to an existing "
                            "file (a path relative to the project, or absolute), or to null")
        name = str(path.resolve())
        return {"path": str(given), "sha256": self._hash(f"file-{setting}", Path(name).parent, {name: name})[name]}

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
    relatives = [relative for files in scan_image_folder(root, data.follow_external_links).files.values() for relative in files]
    digest = hashlib.sha256()
    for relative, sha in hashes.images(root, relatives).items():
        digest.update(f"{relative}\t{sha}\n".encode())
    return {"source": data.source, "images": len(relatives), "sha256": digest.hexdigest()}


def source_records(params: Params, hashes: SourceHashes) -> dict[str, dict]:
    """Every record, by name (`SOURCE_RECORDS`)."""
    teacher, distill = params.teacher, params.distill
    categories = hashes.file("teacher.categories_file", teacher.categories_file)
    return {
        "images": {**images_record(params, hashes), "categories_file": categories},
        "teacher": {"checkpoint": hashes.file("teacher.checkpoint", teacher.checkpoint),
                    "categories_file": categories,
                    "pretrained_weights": hashes.file("teacher.pretrained_weights", teacher.pretrained_weights)},
        "student": {"pretrained_weights": hashes.file("distill.pretrained_weights", distill.pretrained_weights)},
    }
