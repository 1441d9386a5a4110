"""The teacher-logit cache on disk: one folder per cache key, the logits of K seeded views
per training image in `.npy` chunks of `distill.cache_chunk_images` images each.

    teacher-logits-<key>/
        layout.json              shape, dtype, top-k and chunk size (written first)
        values-00000.npy         (images in chunk, views, kept) in cache_dtype
        indices-00000.npy        (images in chunk, views, k) int16/int32, only with cache_top_k

Why this shape:
- **Memory stays flat.** Lookups read each (image, view) row with `os.pread` at its offset in
  the chunk file, so a training process holds one batch of logits, not the cache: at ImageNet
  scale the dense fp32 tensor would be about 20 GB in every rank. The kernel's page cache
  keeps hot chunks in RAM once, shared by every rank on the host. (A memory map would share
  the same pages but count every page touched in each process's RSS.)
- **A kill loses one chunk at most.** Each chunk is written whole to a temporary file and
  renamed into place, so a chunk file that exists is complete; a rebuild starts at the first
  missing one.
- **Every rank builds its share.** Under torchrun the missing chunks are dealt out in turn;
  each chunk is batched on its own, so its bytes do not depend on which rank built it.
- **fp16 and top-k** (FKD, Shen & Xing 2022) cut the bytes per image-view from 4 x categories
  to 2 x categories, or to 2k + 2k with `cache_top_k` = k.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

from vgg2resnet import atomic
from vgg2resnet.config import RuntimeParams, UserError
from vgg2resnet.data.loaders import make_loader
from vgg2resnet.training.placement import Placement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheLayout:
    images: int
    views: int
    categories: int
    dtype: str  # "float16" | "float32"
    top_k: int | None
    chunk_images: int

    @property
    def kept(self) -> int:
        """Logits kept per view: all categories, or the k largest."""
        return min(self.top_k, self.categories) if self.top_k else self.categories

    @property
    def index_dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.categories <= np.iinfo(np.int16).max else np.int32)

    @property
    def chunks(self) -> int:
        return -(-self.images // self.chunk_images)

    def chunk_images_of(self, chunk: int) -> range:
        return range(chunk * self.chunk_images, min(self.images, (chunk + 1) * self.chunk_images))

    def bytes_per_view(self) -> int:
        indices = self.kept * self.index_dtype.itemsize if self.top_k else 0
        return self.kept * np.dtype(self.dtype).itemsize + indices


def _values(folder: Path, chunk: int) -> Path:
    return folder / f"values-{chunk:05d}.npy"


def _indices(folder: Path, chunk: int) -> Path:
    return folder / f"indices-{chunk:05d}.npy"


def _save(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


class LogitCache:
    """Reads logits[i, view] for a batch of (image, view) pairs from the chunk files."""

    def __init__(self, folder: Path, layout: CacheLayout) -> None:
        self.folder, self.layout = folder, layout
        self._files: dict[Path, tuple[int, int]] = {}  # path -> (descriptor, data offset)

    def __del__(self) -> None:
        for fd, _ in self._files.values():
            os.close(fd)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.layout.images, self.layout.views, self.layout.categories

    def complete(self) -> bool:
        return all(_values(self.folder, c).is_file() for c in range(self.layout.chunks))

    def _rows(self, path: Path, dtype: np.dtype, rows: list[tuple[int, int]]) -> np.ndarray:
        """rows of (chunk-relative image, view) read from one .npy file."""
        if path not in self._files:
            fd = os.open(path, os.O_RDONLY)
            with open(fd, "rb", closefd=False) as f:  # the header's length, as numpy wrote it
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, stored = read(f)
                if fortran or stored != dtype or shape[1:] != (self.layout.views, self.layout.kept):
                    raise UserError(
                        f"{path} is not a chunk of this cache ({shape}, {stored}); delete {self.folder} and re-run"
                    )
                self._files[path] = (fd, f.tell())
        fd, offset = self._files[path]
        width = self.layout.kept * dtype.itemsize
        data = b"".join(os.pread(fd, width, offset + (row * self.layout.views + view) * width) for row, view in rows)
        return np.frombuffer(data, dtype=dtype).reshape(len(rows), self.layout.kept)

    def stored(self, indices: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the cache holds for these pairs, as written: (values, category indices or None)."""
        chunks, rows = np.divmod(np.asarray(indices, dtype=np.int64), self.layout.chunk_images)
        views = np.asarray(views, dtype=np.int64)
        values = np.empty((len(rows), self.layout.kept), dtype=self.layout.dtype)
        ids = np.empty((len(rows), self.layout.kept), dtype=self.layout.index_dtype) if self.layout.top_k else None
        for chunk in np.unique(chunks):
            at = np.flatnonzero(chunks == chunk)
            pairs = list(zip(rows[at].tolist(), views[at].tolist()))
            values[at] = self._rows(_values(self.folder, chunk), np.dtype(self.layout.dtype), pairs)
            if ids is not None:
                ids[at] = self._rows(_indices(self.folder, chunk), self.layout.index_dtype, pairs)
        return torch.from_numpy(values).float(), None if ids is None else torch.from_numpy(ids).long()

    def __getitem__(self, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Dense fp32 logits (batch, categories); with top-k, -inf outside each view's k, which
        softmax turns into 0: the teacher's distribution renormalised over its k largest."""
        values, ids = self.stored(*pairs)
        if ids is None:
            return values
        dense = torch.full((len(values), self.layout.categories), float("-inf"))
        return dense.scatter_(1, ids, values)

    def rounding(self, values: torch.Tensor) -> torch.Tensor:
        """The most that storing `values` in cache_dtype can have moved them (half an ulp)."""
        return values.abs() * float(np.finfo(self.layout.dtype).eps) / 2


def open_cache(folder: Path, layout: CacheLayout) -> LogitCache:
    written = json.loads((folder / "layout.json").read_text())
    if written != asdict(layout):
        raise UserError(
            f"{folder} holds a cache of another layout ({written}, expected {asdict(layout)}); "
            "delete the folder and re-run"
        )
    return LogitCache(folder, layout)


class ChunkBatches:
    """Each chunk's (image, view) pairs in batches that never cross into another chunk, made as
    the loader asks for them: a list of every pair would grow with the data set."""

    def __init__(self, layout: CacheLayout, chunks: list[int], batch_size: int) -> None:
        self.layout, self.chunks, self.batch_size = layout, chunks, batch_size

    def views(self) -> int:
        return sum(len(self.layout.chunk_images_of(c)) for c in self.chunks) * self.layout.views

    def __len__(self) -> int:
        return sum(-(-len(self.layout.chunk_images_of(c)) * self.layout.views // self.batch_size) for c in self.chunks)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for chunk in self.chunks:
            items = [(i, v) for i in self.layout.chunk_images_of(chunk) for v in range(self.layout.views)]
            yield from (items[s : s + self.batch_size] for s in range(0, len(items), self.batch_size))


def build_cache(
    folder: Path,
    layout: CacheLayout,
    teacher,
    views: Dataset,
    batch_size: int,
    runtime: RuntimeParams,
    placement: Placement,
    show_progress: bool,
) -> LogitCache:
    """The cache in `folder`, building whatever chunks are missing (this rank's share of them
    under torchrun). `teacher(images, indices, views)` gives fp32 logits."""
    if placement.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "layout.json").is_file():
            atomic.write_json(folder / "layout.json", asdict(layout))
    if placement.distributed:  # every rank sees the same missing chunks
        dist.barrier()
    cache = open_cache(folder, layout)
    missing = [c for c in range(layout.chunks) if not _values(folder, c).is_file()]
    if not missing:
        if placement.is_main:
            log.info("teacher logit cache: reusing %s", folder)
        return cache
    if placement.is_main:
        size = (
            f"{layout.images * layout.views * layout.bytes_per_view() / 1e9:.2f} GB in all, "
            f"{layout.bytes_per_view()} bytes per image-view"
        )
        if len(missing) < layout.chunks:
            log.info(
                "teacher logit cache: %d of %d chunks already built in %s; building the rest (%s)",
                layout.chunks - len(missing),
                layout.chunks,
                folder,
                size,
            )
        else:
            log.info(
                "teacher logit cache: building %d chunk%s in %s (%s)",
                layout.chunks,
                "" if layout.chunks == 1 else "s",
                folder,
                size,
            )
    mine = missing[placement.rank :: placement.world_size]
    batches = ChunkBatches(layout, mine, batch_size)
    if mine:
        _fill(
            folder,
            layout,
            teacher,
            make_loader(views, runtime, batch_size, batches=batches),
            batches.views(),
            placement,
            show_progress,
        )
    log.info(
        "teacher logit cache: rank %d built %d chunk%s of %d",
        placement.rank,
        len(mine),
        "" if len(mine) == 1 else "s",
        layout.chunks,
    )
    if placement.distributed:
        dist.barrier()
    if not cache.complete():
        raise RuntimeError(f"{folder}: chunks are missing after the build")
    return cache


def _fill(
    folder: Path, layout: CacheLayout, teacher, loader, total: int, placement: Placement, show_progress: bool
) -> None:
    """Run the teacher over the loader's batches, writing each chunk as its last view arrives."""
    open_chunks: dict[int, tuple[np.ndarray, np.ndarray | None, list[int]]] = {}
    bar = tqdm(total=total, desc="teacher logit cache", unit="view", disable=not (show_progress and placement.is_main))
    for images, _, indices, view_ids in loader:
        logits = teacher(images.to(placement.device), indices, view_ids).cpu()
        ids = None
        if layout.top_k:
            logits, ids = logits.topk(layout.kept, dim=1)
        values = logits.numpy().astype(layout.dtype)
        if not np.isfinite(values).all():
            raise UserError(
                f"teacher logits overflow distill.cache_dtype {layout.dtype} "
                f"(largest {logits.abs().max().item():.3g}); set it to float32"
            )
        chunk = int(indices[0]) // layout.chunk_images  # a batch never crosses chunks
        if chunk not in open_chunks:
            n = len(layout.chunk_images_of(chunk))
            open_chunks[chunk] = (
                np.empty((n, layout.views, layout.kept), layout.dtype),
                np.empty((n, layout.views, layout.kept), layout.index_dtype) if layout.top_k else None,
                [n * layout.views],
            )
        buf, id_buf, left = open_chunks[chunk]
        rows, cols = indices.numpy() - chunk * layout.chunk_images, view_ids.numpy()
        buf[rows, cols] = values
        if id_buf is not None:
            id_buf[rows, cols] = ids.numpy()
        left[0] -= len(rows)
        bar.update(len(rows))
        if left[0] == 0:  # indices first: a values file is what marks the chunk complete
            if id_buf is not None:
                _save(_indices(folder, chunk), id_buf)
            _save(_values(folder, chunk), buf)
            del open_chunks[chunk]
    bar.close()
