"""What the teacher and distill stages share: categories, loaders, run fingerprints, model meta."""

from __future__ import annotations

import hashlib
import json

import torch
from torch.utils.data import DataLoader

from vgg2resnet.config import Params, TrainParams
from vgg2resnet.data.categories import read_categories
from vgg2resnet.data.datasets import ImageDataset, SeededViews, split_dataset
from vgg2resnet.data.transforms import eval_transform, preprocessing_meta, train_transform
from vgg2resnet.errors import UserError
from vgg2resnet.lineage import file_sha256, git_revision, recorded_data_version


def data_categories(params: Params) -> list[str]:
    path = params.data.prepared_dir / "categories.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `vgg2resnet prepare` (or `dvc repro`) first")
    return read_categories(path)


def manifest_hash(params: Params) -> str:
    return file_sha256(params.data.prepared_dir / "manifest.parquet")


def train_views(params: Params, train: TrainParams, categories: list[str]) -> SeededViews:
    images = split_dataset(params.data.prepared_dir, params.data.raw_dir, "train", categories)
    return SeededViews(images, train_transform(train.image_size, params.augment), params.runtime.seed)


def eval_loader(params: Params, split: str, categories: list[str], batch_size: int,
                transform=None, image_size: int | None = None) -> DataLoader:
    """A split in manifest order, through `transform` or the eval preset at image_size."""
    if transform is None:
        transform = eval_transform(image_size, params.augment.mean, params.augment.std)
    dataset: ImageDataset = split_dataset(params.data.prepared_dir, params.data.raw_dir, split,
                                          categories, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def state_path(params: Params, stage: str):
    """Where a training stage keeps its resumable state (deleted once the stage finishes)."""
    return params.paths.state_dir / stage / "last.pt"


def fingerprint(*parts) -> str:
    """Identifies a training run by everything that shapes its result, for safe resume."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def model_meta(params: Params, arch: str, categories: list[str], image_size: int, init: str,
               **extra) -> dict:
    return {
        "arch": arch,
        "categories": categories,
        "preprocessing": preprocessing_meta(image_size, params.augment),
        "init": init,
        "data_version": recorded_data_version(params.data.raw_dir),
        "manifest_sha256": manifest_hash(params),
        "git_revision": git_revision(),
        "torch": str(torch.__version__),
        **extra,
    }
