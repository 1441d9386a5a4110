"""Teacher-logit cache memory against the data set's size: build + one epoch of lookups.

    python benchmarks/cache_memory.py                     # 20k and 200k images x 4 views x 1,000
    python benchmarks/cache_memory.py --images 2000       # a quick run: 2k and 20k

Runs by hand (not in CI). Each shape is built and read in a fresh process through the
project's own cache (`distill.logit_cache`: chunked .npy files, distill.cache_dtype and
cache_top_k from params.yaml, DataLoader workers from runtime.num_workers) by a stand-in
teacher that computes its logits from the (image, view) pair, so the teacher's cost is not what
is measured. One epoch of lookups then reads one random view of every image in shuffled
batches, as training does. Printed, from this run:

- the peak RSS of each process tree (workers included) and cache bytes on disk per image-view;
- rss_ratio: large shape's peak over the small shape's (goal <= 1.3; the dense fp32 tensor
  this replaced held 3.2 GB of logits for 200k x 4 x 1,000 against 0.32 GB for 20k).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from peak_rss import peak_rss
from torch.utils.data import Dataset

from vgg2resnet.config import load_params
from vgg2resnet.distill.logit_cache import CacheLayout, build_cache, open_cache
from vgg2resnet.training.placement import Placement


class PairItems(Dataset):
    """(image, view) -> a 1-pixel stand-in image, label, index, view: the shape a cache build reads."""

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        index, view = item
        return torch.zeros(1), 0, index, view


class StandInTeacher:
    """Logits that differ per image, view and category, at the cost of a sine."""

    def __init__(self, categories: int) -> None:
        self.phase = torch.arange(categories) * 0.113

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return 8 * torch.sin(indices[:, None] * 0.37 + views[:, None] * 1.3 + self.phase)


def layout_for(images: int, views: int, categories: int) -> CacheLayout:
    d = load_params().distill
    return CacheLayout(images, views, categories, d.cache_dtype, d.cache_top_k, d.cache_chunk_images)


def child(folder: str, images: str, views: str, categories: str, batch_size: str) -> None:
    """Build the cache in `folder`, then look up one random view of every image, in batches."""
    layout = layout_for(int(images), int(views), int(categories))
    params, batch = load_params(), int(batch_size)
    placement = Placement(device=torch.device("cpu"))
    start = time.perf_counter()
    build_cache(
        Path(folder),
        layout,
        StandInTeacher(layout.categories),
        PairItems(),
        batch,
        params.runtime,
        placement,
        show_progress=False,
    )
    built = time.perf_counter() - start
    cache = open_cache(Path(folder), layout)
    generator = torch.Generator().manual_seed(params.runtime.seed)
    order = torch.randperm(layout.images, generator=generator)
    view_of = torch.randint(layout.views, (layout.images,), generator=generator)
    start = time.perf_counter()
    for at in range(0, layout.images, batch):
        indices = order[at : at + batch]
        cache[indices, view_of[indices]]
    read = time.perf_counter() - start
    print(
        f"  {layout.images} images: build {layout.images * layout.views / built:,.0f} views/s, "
        f"lookups {layout.images / read:,.0f} rows/s",
        flush=True,
    )


def measure(args: argparse.Namespace, work: Path) -> None:
    layout = layout_for(args.images, args.views, args.categories)
    print(
        f"cache {layout.dtype}, top-k {layout.top_k}, {layout.chunk_images} images per chunk; "
        f"{args.views} views x {args.categories} categories"
    )
    peaks = []
    for images in (args.images, args.images * args.scale):
        folder = work / f"cache-{images}"
        shutil.rmtree(folder, ignore_errors=True)
        peaks.append(
            peak_rss(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(folder),
                    str(images),
                    str(args.views),
                    str(args.categories),
                    str(args.batch_size),
                ]
            )
        )
        stored = sum(f.stat().st_size for f in folder.iterdir())
        print(
            f"{images} x {args.views} x {args.categories}: peak RSS {peaks[-1] / 2**20:.0f} MiB, "
            f"{stored / 2**20:.0f} MiB on disk, {stored / (images * args.views):.0f} bytes per image-view"
        )
        shutil.rmtree(folder)
    print(f"rss_ratio={peaks[1] / peaks[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="the small shape's images")
    parser.add_argument("--scale", type=int, default=10, help="the large shape has this many times the images")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--categories", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="where the caches go (default: a temp dir)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # one measured process
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    elif args.work:
        measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="cache-memory-") as work:
            measure(args, Path(work))


if __name__ == "__main__":
    main()
