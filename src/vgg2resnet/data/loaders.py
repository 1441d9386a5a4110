"""The one DataLoader factory. Every loader of the package (training, validation, evaluation,
the teacher-logit cache and its check, int8 calibration, the drift reference) is built here,
so `runtime.*` settings reach all of them, and loading at 10^5-10^6 images keeps the GPU fed.

- `runtime.num_workers: auto` gives one worker per CPU core this process may use.
- Workers persist across epochs (no fork and re-import per epoch), and each prefetches
  `runtime.prefetch_factor` batches.
- Pinned memory on a CUDA host only, where it makes host-to-device copies asynchronous.
- A seeded generator and `seed_worker` make worker RNGs a function of `runtime.seed`. Seeded
  views draw from a per-view seed anyway (`SeededViews`), so a view is the same tensor with
  0 workers or 16; the worker seeds cover anything else that draws from numpy or `random`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from vgg2resnet.config import RuntimeParams


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and
    schedulers set), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(runtime: RuntimeParams) -> int:
    return available_cpus() if runtime.num_workers == "auto" else runtime.num_workers


def seed_worker(worker_id: int) -> None:
    """numpy's and random's seeds from the worker's torch seed, which DataLoader derives from
    its generator (PyTorch's reproducibility recipe)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochItems(Sampler):
    """The items of the current epoch; `set_epoch` swaps them, so one loader and its persistent
    workers serve every epoch (the sampler runs in the main process)."""

    def __init__(self, items: Sequence | None = None) -> None:
        self.items: Sequence = items if items is not None else []

    def set_items(self, items: Sequence) -> None:
        self.items = items

    def __iter__(self) -> Iterator:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def make_loader(
    dataset: Dataset,
    runtime: RuntimeParams,
    batch_size: int,
    sampler: Sampler | Sequence | None = None,
    *,
    batches: Sequence[Sequence] | None = None,
    collate: Callable | None = None,
) -> DataLoader:
    """Batches of `dataset` in order, or in the order `sampler` gives, or exactly the given
    `batches` (lists of items), with runtime's workers; `collate` replaces the default stacking."""
    workers = worker_count(runtime)
    per_worker = {"persistent_workers": True, "prefetch_factor": runtime.prefetch_factor} if workers else {}
    batching = (
        {"batch_sampler": batches}
        if batches is not None
        else {"batch_size": batch_size, "sampler": sampler, "shuffle": False}
    )
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        pin_memory=runtime.pin_memory and torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(runtime.seed),
        collate_fn=collate,
        **per_worker,
    )


def with_progress(loader: DataLoader, desc: str, leave: bool = True) -> Iterator:
    """The loader's batches, with a progress bar in images per second (`leave`: kept on screen
    once done): the first element of each batch holds its images."""
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=2.0, leave=leave) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))
