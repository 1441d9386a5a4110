"""Datasets and loaders over the manifest: plain (eval) and seeded augmented views (training,
logit cache), for any split."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, TrainParams
from vgg2resnet.data.images import pixels
from vgg2resnet.data.loaders import make_loader
from vgg2resnet.data.shards import StoredImages
from vgg2resnet.data.transforms import eval_transform, train_transform


def load_split(manifest_path: Path, split: str) -> pd.DataFrame:
    """The decodable rows of one split, sorted by path."""
    manifest = pd.read_parquet(manifest_path)
    rows = manifest[(manifest["split"] == split) & manifest["decodes"]]
    return rows.sort_values("path").reset_index(drop=True)


def sample_rows(rows: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most `limit` of the rows, in their order, the same for the same seed; all of them when
    limit is None or not smaller. Each category gets its quota (limit x its share of the rows)
    rounded down or up, by largest remainders, so it is within one row of its share; its rows are
    the first of a seeded shuffle."""
    if limit is None or len(rows) <= limit:
        return rows
    quota = rows["category"].value_counts(sort=False) * limit / len(rows)
    take = np.floor(quota).astype(int)
    remainders = (quota - take).sort_values(ascending=False, kind="stable")
    take[remainders.index[: limit - take.sum()]] += 1
    shuffled = rows.iloc[np.random.default_rng(seed).permutation(len(rows))]
    chosen = shuffled.index[shuffled.groupby("category").cumcount() < shuffled["category"].map(take)]
    return rows.loc[sorted(chosen)].reset_index(drop=True)


def view_seed(seed: int, index: int, view: int) -> int:
    """A 63-bit seed naming one augmented view of one image."""
    return int(np.random.SeedSequence([seed, index, view]).generate_state(1, np.uint64)[0] >> 1)


class ImageDataset(Dataset):
    """(image tensor, label, row index) for each manifest row. An image is read out of its shard
    and decoded when asked for, and not kept: memory stays flat whatever the number of images
    (decoded, 50k photos are 28 GB), and DataLoader workers decode in parallel."""

    def __init__(self, rows: pd.DataFrame, root: Path, categories: list[str], transform) -> None:
        index = {name: i for i, name in enumerate(categories)}
        self.images = StoredImages(root, rows)
        self.labels = torch.tensor(rows["category"].map(index).to_numpy(np.int64), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> torch.Tensor:
        return pixels(self.images.read(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(self.image(i)), self.labels[i], i


class SeededViews(Dataset):
    """Item (i, view) is the augmented view of image i drawn under view_seed(seed, i, view).

    Teacher and student ask for the same (i, view) and get the same tensor, whether the
    teacher runs live or its logits were cached for that view earlier.
    """

    def __init__(self, images: ImageDataset, transform, seed: int) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        i, view = item
        image = self.images.image(i)
        # A worker's RNG serves only its views, so it has no state to keep; the training
        # process's RNG stays where it was. The transforms draw from the CPU generator only, and
        # seeding that one, not torch.manual_seed, matters for speed: manual_seed also queues a
        # seed for each lazy accelerator backend, recording a stack trace each time (12% of a view).
        keep_state = nullcontext() if get_worker_info() is not None else torch.random.fork_rng(devices=[])
        with keep_state:
            torch.default_generator.manual_seed(view_seed(self.seed, i, view))
            return self.transform(image), self.images.labels[i], i, view


def split_rows(params: Params, split: str, limit: int | None = None) -> pd.DataFrame:
    """A split's rows in manifest order, or a stratified sample of `limit` of them (seeded by data.seed)."""
    rows = load_split(Artifacts(params).manifest, split)
    if limit is not None:  # data.seed is read only here, so only the stages that sample depend on it
        rows = sample_rows(rows, limit, params.data.seed)
    return rows


def split_dataset(
    params: Params, split: str, categories: list[str], transform=None, limit: int | None = None
) -> ImageDataset:
    """A split in manifest order, or a stratified sample of `limit` of its images (seeded by data.seed)."""
    return ImageDataset(split_rows(params, split, limit), Artifacts(params).raw_dir, categories, transform)


def train_views(params: Params, train: TrainParams, categories: list[str]) -> SeededViews:
    """The train split as seeded augmented views at the training stage's image size."""
    return SeededViews(
        split_dataset(params, "train", categories),
        train_transform(train.image_size, params.augment),
        params.runtime.seed,
    )


def eval_loader(
    params: Params,
    split: str,
    categories: list[str],
    batch_size: int,
    transform=None,
    image_size: int | None = None,
    limit: int | None = None,
) -> DataLoader:
    """A split in manifest order (or a sample of `limit` images, see `split_dataset`), through
    `transform` or the eval preset at image_size."""
    if transform is None:
        transform = eval_transform(image_size, params.augment.mean, params.augment.std)
    return make_loader(split_dataset(params, split, categories, transform, limit), params.runtime, batch_size)
