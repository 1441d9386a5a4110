"""data/raw as a handful of content-addressed shards: how the images are versioned.

DVC keeps an entry per tracked file, in memory and in the remote: a folder of 10^6 images makes
every `dvc status`, `push` and `pull` hold 2-3 GB and, to an object store, send one request per
image. So `prepare` packs the images it accepts into shards of about `data.shard_bytes` each and
DVC tracks those and one index:

- **A shard is a plain tar file** (`<sha256 of the shard, 16 hex>.tar`): `tar tf` lists it and
  `tar xf` gives the images back under their paths in your folder (identical files once,
  under the first of their paths). Its name is its content's hash, so a shard never changes
  once written, and members carry no time or owner, so the same images packed in the same
  order give the same bytes.
- **`index.parquet`** maps each image (its path, so its category) to its SHA-256 and where its
  bytes lie: shard, offset, length. It belongs to data/raw, so the data version (DVC's md5 of
  data/raw) changes when any image, path or label does. The manifest carries the same columns,
  and loaders read an image with one `pread` at its offset.
- **A re-run writes only new data.** Images whose bytes an earlier shard holds stay where they
  are (the shard is linked into the new data/raw, not copied); only new content goes into new
  shards. Identical files are stored once.
- **Removed images are compacted away** when they make up more than half of a shard's bytes:
  that shard's remaining images are written again into new shards and the old one is dropped,
  so data/raw never holds more than about twice the bytes of the images it lists.

Shards are laid out in the order images arrive, so two projects that reached the same images by
different histories can hold them in different shards (and so have different data versions);
one project re-run on unchanged images keeps its data version.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vgg2resnet.config import UserError

INDEX = "index.parquet"
# The index's attrs: shard -> [its file's bytes, the bytes of every image written into it].
SHARDS = "shards"
LOCATION = ["shard", "offset"]  # where an image's bytes lie; the manifest carries them too
LOCATED = ["sha256", *LOCATION, "bytes"]
INDEX_COLUMNS = ["path", *LOCATED]
SHARD_SUFFIX = ".tar"
OPEN_SHARDS = 64  # descriptors a StoredImages keeps open at most (each dataset, each process)
# A shard is kept while the images still listed make up at least this share of its bytes.
KEEP_LIVE_SHARE = 0.5


def read_index(raw_dir: Path) -> pd.DataFrame | None:
    """Where the images of a sharded data/raw lie (its index less the paths), or None (no
    data/raw yet, or one from before shards). Its attrs hold each shard's size and bytes of
    images, listed or not (`SHARDS`)."""
    try:
        return pd.read_parquet(Path(raw_dir) / INDEX, columns=LOCATED)
    except (OSError, ValueError, KeyError):
        return None


class _Hashing(io.RawIOBase):
    """A file that hashes what is written to it, so a shard is named without being read back."""

    def __init__(self, file) -> None:
        self.file, self.digest = file, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.file.tell()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)


@dataclass
class _Open:
    """The shard being filled: its number, its partial file and the tar writer on it."""

    number: int
    path: Path
    sink: _Hashing
    tar: tarfile.TarFile


class ShardWriter:
    """Appends images to shards of about `shard_bytes` in `folder`; `close` names each by its hash.

    `location` says where `add` put an image (shard number, offset of its bytes); `names` maps
    the numbers to file names once closed."""

    def __init__(self, folder: Path, shard_bytes: int) -> None:
        self.folder, self.shard_bytes = Path(folder), shard_bytes
        self.names: dict[int, str] = {}
        self.payload_bytes: dict[int, int] = {}  # shard number -> bytes of the images in it
        self._open: _Open | None = None
        self._count = 0
        self._stored: dict[str, tuple[int, int]] = {}  # sha256 -> location: identical files once

    def add(self, name: str, payload: bytes, sha256: str) -> None:
        if sha256 in self._stored:
            return
        if self._open is not None and self._open.tar.offset + len(payload) > self.shard_bytes:
            self._close_shard()
        if self._open is None:
            path = self.folder / f".partial-{self._count}{SHARD_SUFFIX}"
            sink = _Hashing(open(path, "wb"))
            self._open = _Open(self._count, path, sink, tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT))
            self._count += 1
        tar = self._open.tar
        info = tarfile.TarInfo(name)  # no mtime, owner or mode beyond the default: same bytes, same shard
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
        tar.members.clear()  # tarfile keeps a TarInfo per member written: 10^5 of them per shard
        padded = -(-len(payload) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self._stored[sha256] = (self._open.number, tar.offset - padded)  # the data follow the member's header
        self.payload_bytes[self._open.number] = self.payload_bytes.get(self._open.number, 0) + len(payload)

    def _close_shard(self) -> None:
        current, self._open = self._open, None
        current.tar.close()
        current.sink.file.close()
        name = f"{current.sink.digest.hexdigest()[:16]}{SHARD_SUFFIX}"
        os.replace(current.path, self.folder / name)
        self.names[current.number] = name

    def close(self) -> dict[int, str]:
        if self._open is not None:
            self._close_shard()
        return self.names

    def location(self, sha256: str) -> tuple[int, int]:
        """Where `add` put this content: (shard number, offset)."""
        return self._stored[sha256]


class Packer:
    """Fills the next data/raw with shards holding every image the run lists.

    Give it the bytes of each new content as they are read (`add`); `finish` then links the
    previous shards that are mostly still listed, copies the listed images of the others into
    new shards, and says where each image lies."""

    def __init__(self, into: Path, shard_bytes: int, old_dir: Path | None = None) -> None:
        self.into, self.old_dir = Path(into), old_dir
        self.writer = ShardWriter(into, shard_bytes)
        previous = read_index(old_dir) if old_dir is not None else None
        if previous is None:
            previous = pd.DataFrame(columns=LOCATED)
        # A shard missing or of another size than written (deleted, or an interrupted checkout)
        # holds nothing: its images are read from the source again.
        shards = previous.attrs.get(SHARDS, {})
        self.shards = {name: shards[name] for name in shards if _size(old_dir / name) == shards[name][0]}
        previous = previous[previous["shard"].isin(self.shards)]
        self.held = previous.drop_duplicates("sha256").set_index("sha256")

    def stored(self) -> frozenset[str]:
        """The contents the previous data/raw holds: a file with one of these is not sent to `add`."""
        return frozenset(self.held.index)

    def add(self, path: str, payload: bytes, sha256: str) -> None:
        self.writer.add(path, payload, sha256)

    def finish(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The location (shard, offset) of each row's image (rows: path, sha256, bytes), once
        every shard is written; then index.parquet."""
        shas = rows["sha256"].to_numpy(dtype=object)
        if len(self.held):
            where = self.held.index.get_indexer(shas)
            held = {column: self.held[column].to_numpy()[where] for column in LOCATED[1:]}
        else:  # nothing held: no positions to take
            where = np.full(len(rows), -1)
            held = {"shard": np.full(len(rows), None, dtype=object), "offset": where, "bytes": where}
        kept = self._kept(shas)
        for name in sorted(kept):
            _link(self.old_dir / name, self.into / name)
        keep = (where >= 0) & np.isin(held["shard"], list(kept))
        moved = np.flatnonzero((where >= 0) & ~keep)  # listed, in a shard that is dropped
        old = StoredImages(self.old_dir, pd.DataFrame({column: held[column][moved] for column in LOCATED[1:]}))
        for n, i in enumerate(moved):
            payload = old.read(n)
            if hashlib.sha256(payload).hexdigest() != shas[i]:
                raise UserError(
                    f"{self.old_dir / held['shard'][i]} does not hold the image its index says: the shard is "
                    f"damaged; delete {self.old_dir} and run prepare again (it reads every image again)"
                )
            self.writer.add(rows["path"].iat[i], payload, shas[i])
        names = self.writer.close()
        shard = np.where(keep, held["shard"], None)
        offset = np.where(keep, held["offset"], 0).astype(np.int64)
        for i in np.flatnonzero(~keep):
            number, offset[i] = self.writer.location(shas[i])
            shard[i] = names[number]
        located = rows.assign(shard=shard, offset=offset)
        index = located[INDEX_COLUMNS].sort_values("path", kind="stable").reset_index(drop=True)
        shards = {name: self.shards[name] for name in kept} | {
            names[number]: [_size(self.into / names[number]), total]
            for number, total in self.writer.payload_bytes.items()
        }
        index.attrs[SHARDS] = dict(sorted(shards.items()))  # by name: the same shards, the same file
        index.to_parquet(self.into / INDEX, index=False)
        return located[LOCATION]

    def _kept(self, listed: np.ndarray) -> set[str]:
        """The previous shards whose listed images still make up KEEP_LIVE_SHARE of the bytes of
        all the images written into them."""
        held = self.held
        live = held.index.isin(listed)
        live_bytes = held["bytes"][live].groupby(held["shard"][live]).sum()
        return {name for name, size in live_bytes.items() if size >= KEEP_LIVE_SHARE * self.shards[name][1]}


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links refused: copy it
        shutil.copyfile(source, target)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class StoredImages:
    """Reads images out of data/raw's shards by row: one `pread` each, through a file
    descriptor kept open per shard. Locations are numpy arrays, not Python objects, so that a
    forked DataLoader worker does not copy them page by page as it touches reference counts."""

    def __init__(self, raw_dir: Path, rows: pd.DataFrame) -> None:
        codes, shards = pd.factorize(rows["shard"])
        self.shards = np.array([str(Path(raw_dir) / name) for name in shards])
        self.codes = codes.astype(np.int32)
        self.offsets = rows["offset"].to_numpy(np.int64)
        self.lengths = rows["bytes"].to_numpy(np.int64)
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, i: int) -> bytes:
        code = int(self.codes[i])
        fd = self._files.get(code)
        if fd is None:
            if len(self._files) >= OPEN_SHARDS:  # close the one opened first: a process has ~1,024
                os.close(self._files.pop(next(iter(self._files))))
            fd = self._files[code] = os.open(self.shards[code], os.O_RDONLY)
        return os.pread(fd, int(self.lengths[i]), int(self.offsets[i]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # descriptors do not cross processes

    def __del__(self) -> None:
        for fd in self.__dict__.get("_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
