"""Data path at scale: prepare's parallel and incremental speed, the training loader against a
plain torchvision ImageFolder loader, disk bytes after DVC, and loader memory against N.

    python benchmarks/data_throughput.py --images 4000

Runs by hand (not in CI), on a synthetic ImageFolder it writes itself: N JPEGs of 200-500 px
a side in --categories folders, the same bytes for the same arguments. Every ratio compares
two figures measured in this run, on this machine:

- prepare_parallel_ratio: prepare's images/s with all workers over one process;
- prepare_incremental_ratio: a re-run's time over a fresh run's, unchanged and after adding 1%;
- loader_vs_torchvision: the training loader's images/s at --image-size over
  torchvision.datasets.ImageFolder + PIL + the same augmentations as a plain v2 pipeline, in
  torchvision's documented order (all on uint8, then float), with the same workers; also
  printed against ImageFolder running the project's own transform, which isolates decoding;
- disk_ratio: bytes stored in data/raw and the DVC cache (a linked file once) per source byte,
  under the repository's cache.type and under plain copies;
- loader_rss_ratio: peak RSS (main process and workers) of one epoch over 4N against N images.
"""

from __future__ import annotations

import argparse
import configparser
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peak_rss import peak_rss
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from vgg2resnet.config import Params, load_params
from vgg2resnet.data.datasets import ImageDataset, SeededViews, load_split
from vgg2resnet.data.loaders import EpochItems, available_cpus, make_loader, worker_count
from vgg2resnet.data.transforms import train_transform
from vgg2resnet.stages import prepare
from vgg2resnet.training.loop import epoch_items
from vgg2resnet.training.placement import Placement

ROOT = Path(__file__).resolve().parents[1]


def synthetic_folder(root: Path, images: int, categories: int, first: int = 0) -> Path:
    """Photo-like JPEGs (smooth gradients, texture and noise) of varied sizes and aspect ratios."""
    for i in range(first, first + images):
        rng = np.random.default_rng(i)
        width, height = (int(v) for v in rng.integers(200, 501, size=2))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = (
            rng.uniform(0, 255, 3) + rng.uniform(-0.4, 0.4, 3) * x[..., None] + rng.uniform(-0.4, 0.4, 3) * y[..., None]
        )
        texture = 30 * np.sin(x[..., None] / rng.uniform(3, 20)) * np.cos(y[..., None] / rng.uniform(3, 20))
        pixels = np.clip(base + texture + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        folder = root / f"category_{i % categories:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:07d}.jpg", quality=90)
    return root


def with_settings(params: Params, work: Path, source: Path, workers: int | str) -> Params:
    return params.model_copy(
        update={
            "data": params.data.model_copy(
                update={"source": str(source), "raw_dir": work / "raw", "prepared_dir": work / "prepared"}
            ),
            "runtime": params.runtime.model_copy(update={"num_workers": workers}),
            "paths": params.paths.model_copy(update={"state_dir": work / "state"}),
        }
    )


def timed_prepare(params: Params) -> float:
    start = time.perf_counter()
    prepare.run(params)
    return time.perf_counter() - start


def dvc_cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config["cache"]["type"].strip('"')


def disk_ratio(params: Params, source: Path, work: Path, cache_type: str) -> float:
    """Bytes of data/raw plus the DVC cache, a linked file counted once, per byte of the source,
    after `prepare` and `dvc add` of data/raw (a stage output is committed the same way)."""
    project = work / f"dvc-{cache_type.replace(',', '-')}"
    project.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "cache.type", cache_type]):
        subprocess.run(command, cwd=project, check=True)
    prepare.run(with_settings(params, project / "data", source, "auto"))
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=project, check=True)
    stored = {}
    for folder in (project / "data" / "raw", project / ".dvc" / "cache"):
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.endswith(".dir"):
                stored[path.stat().st_ino] = path.stat().st_size
    return sum(stored.values()) / sum(p.stat().st_size for p in source.rglob("*") if p.is_file())


def our_loader(params: Params, image_size: int, batch_size: int):
    """The training loader exactly as `fit` builds it: seeded views through the factory."""
    categories = sorted(p.name for p in Path(params.data.source).iterdir())
    images = ImageDataset(
        load_split(params.data.prepared_dir / "manifest.parquet", "train"), params.data.raw_dir, categories, None
    )
    views = SeededViews(images, train_transform(image_size, params.augment), params.runtime.seed)
    items = EpochItems(epoch_items(len(views), 0, params.runtime.seed, None, Placement(torch.device("cpu"))))
    return make_loader(views, params.runtime, batch_size, items)


def plain_transform(image_size: int, augment) -> v2.Compose:
    """The augmentations of train_transform as a plain v2 pipeline is written: uint8 throughout."""
    jitter = augment.color_jitter
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=(augment.crop_scale_min, 1.0), antialias=True),
            *([v2.RandomHorizontalFlip()] if augment.hflip else []),
            v2.RandomRotation(augment.rotation_degrees, fill=255),
            v2.ColorJitter(jitter, jitter, jitter),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(augment.mean), list(augment.std)),
        ]
    )


def torchvision_loader(params: Params, transform: v2.Compose, batch_size: int):
    """The plain baseline: ImageFolder over the same train images in the source folder, a file
    each, PIL decoding, `transform`."""
    train = set(load_split(params.data.prepared_dir / "manifest.parquet", "train")["path"])
    root = Path(params.data.source)
    dataset = ImageFolder(
        str(root), transform=transform, is_valid_file=lambda p: Path(p).relative_to(root).as_posix() in train
    )
    workers = worker_count(params.runtime)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )


def images_per_s(loader) -> float:
    start, seen = time.perf_counter(), 0
    for images, *_ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def peak_rss_of_epoch(params_file: Path, work: Path, image_size: int, batch_size: int) -> int:
    """Peak summed RSS of a fresh process (and its workers) loading one epoch."""
    return peak_rss(
        [sys.executable, __file__, "--rss-child", str(params_file), str(work), str(image_size), str(batch_size)]
    )


def multiplied(params: Params, work: Path, factor: int) -> Params:
    """The same train images listed `factor` times under distinct paths, read from the same
    shards: a data set `factor` times as long whose images cost no more to generate."""
    rows = load_split(params.data.prepared_dir / "manifest.parquet", "train")
    copies = [rows.assign(path=[f"copy{copy}/{p}" for p in rows["path"]]) for copy in range(factor)]
    prepared = work / f"prepared-x{factor}"
    prepared.mkdir()
    pd.concat(copies).to_parquet(prepared / "manifest.parquet", index=False)
    return params.model_copy(update={"data": params.data.model_copy(update={"prepared_dir": prepared})})


def rss_child(params_file: str, work: str, image_size: str, batch_size: str) -> None:
    params = Params.model_validate(json.loads(Path(params_file).read_text()))  # the settings turn strings into paths
    loader = our_loader(params, int(image_size), int(batch_size))
    images_per_s(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vgg2resnet-data-"))
    base = load_params(ROOT / "params.yaml")
    base = base.model_copy(
        update={
            "data": base.data.model_copy(
                update={"split": base.data.split.model_copy(update={"val": 0.05, "test": 0.05})}
            )
        }
    )  # most images in train, which the loader reads
    cores = available_cpus()
    print(f"{args.images} JPEGs, {args.categories} categories, {cores} CPU cores; scratch {work}")
    source = synthetic_folder(work / "source", args.images, args.categories)
    print(f"source: {sum(p.stat().st_size for p in source.rglob('*.jpg')) / 1e6:.1f} MB")

    # (a) parallel prepare, each run fresh
    one = timed_prepare(with_settings(base, work / "one", source, 1))
    every = timed_prepare(with_settings(base, work / "all", source, "auto"))
    print(f"prepare, 1 process:     {args.images / one:8.1f} img/s")
    print(f"prepare, {cores} workers:     {args.images / every:8.1f} img/s")
    print(f"prepare_parallel_ratio={one / every:.2f}")

    # (b) incremental prepare, in the folder the fresh all-workers run wrote
    params = with_settings(base, work / "all", source, "auto")
    unchanged = timed_prepare(params)
    synthetic_folder(source, max(1, args.images // 100), args.categories, first=args.images)
    added = timed_prepare(params)
    print(f"prepare re-run, unchanged: {unchanged:.2f} s; after adding 1%: {added:.2f} s; fresh: {every:.2f} s")
    print(f"prepare_incremental_ratio={added / every:.3f} (unchanged: {unchanged / every:.3f})")

    # (c) the training loader against torchvision's ImageFolder, twice each, best kept
    def best(make) -> float:
        return max(images_per_s(make()) for _ in range(2))

    ours = best(lambda: our_loader(params, args.image_size, args.batch_size))
    plain = best(lambda: torchvision_loader(params, plain_transform(args.image_size, params.augment), args.batch_size))
    same = best(lambda: torchvision_loader(params, train_transform(args.image_size, params.augment), args.batch_size))
    print(
        f"loader at {args.image_size} px, {cores} workers: ours {ours:.1f} img/s; torchvision ImageFolder "
        f"{plain:.1f} img/s with the plain v2 pipeline, {same:.1f} img/s with our transform"
    )
    print(f"loader_vs_torchvision={ours / plain:.2f} (against our transform: {ours / same:.2f})")

    # (d) disk bytes after prepare + DVC, with the repository's cache.type and with copies
    linked = disk_ratio(base, source, work, dvc_cache_type())
    copied = disk_ratio(base, source, work, "copy")
    print(f"disk_ratio={linked:.2f} (cache.type {dvc_cache_type()}); with cache.type copy: {copied:.2f}")

    # (e) loader memory: one epoch over N train images, then over 4N
    peaks = {}
    for factor in (1, 4):
        scaled = multiplied(params, work, factor)
        params_file = work / f"params-x{factor}.json"
        params_file.write_text(scaled.model_dump_json())
        peaks[factor] = peak_rss_of_epoch(params_file, work, args.image_size, args.batch_size)
    print(f"loader peak RSS: {peaks[1] / 2**20:.0f} MiB over N, {peaks[4] / 2**20:.0f} MiB over 4N")
    print(f"loader_rss_ratio={peaks[4] / peaks[1]:.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(*sys.argv[2:6])
    else:
        main()
