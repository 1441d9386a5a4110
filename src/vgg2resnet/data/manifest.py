"""The manifest: one row per image with its facts (hash, size, mode, decode status) and its split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from vgg2resnet.config import SplitParams
from vgg2resnet.data.images import UndecodableImage, open_image
from vgg2resnet.data.shards import LOCATION

MANIFEST_COLUMNS = [
    "path",
    "category",
    "split",
    "sha256",
    "dhash",
    "width",
    "height",
    "mode",
    "bytes",
    "decodes",
    "decode_error",
    *LOCATION,  # where the image's bytes lie in data/raw (vgg2resnet.data.shards)
]
SPLITS = ("train", "val", "test")
# Recorded in the manifest; a re-run of prepare reuses facts only from a manifest of the same
# version. Raise it whenever image_facts, the decoder or the dhash would give other facts.
FACTS_VERSION = 1


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    dhash: str
    width: int
    height: int
    mode: str
    bytes: int
    decodes: bool
    decode_error: str


def difference_hash(image: Image.Image, size: int = 8) -> str:
    """64-bit difference hash (Krawetz): robust to re-encoding and resizing, for near-duplicates."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def image_facts(payload: bytes, max_pixels: int) -> ImageFacts:
    """Hash and fully decode one file's bytes, so no later stage decodes it again. Size and mode
    are the upright image's, as every model sees it."""
    digest = hashlib.sha256(payload).hexdigest()
    try:
        image = open_image(payload, max_pixels)
    except UndecodableImage as exc:
        return ImageFacts(digest, "", 0, 0, "", len(payload), False, str(exc))
    return ImageFacts(digest, difference_hash(image), image.width, image.height, image.mode, len(payload), True, "")


def assign_splits(frame: pd.DataFrame, split: SplitParams, seed: int) -> pd.Series:
    """Stratified, seeded split: every category gets at least one val and one test image.

    Rows are ordered by content hash first, so renaming files or re-listing a folder in a
    different order gives the same split.
    """
    result = pd.Series("train", index=frame.index, dtype=object)
    for number, (_, group) in enumerate(sorted(frame.groupby("category"), key=lambda g: g[0])):
        order = group.sort_values(["sha256", "path"]).index.to_numpy()
        rng = np.random.default_rng([seed, number])
        order = order[rng.permutation(len(order))]
        n = len(order)
        n_test = max(1, round(n * split.test)) if n >= 3 else 0
        n_val = max(1, round(n * split.val)) if n >= 3 else 0
        result[order[:n_test]] = "test"
        result[order[n_test : n_test + n_val]] = "val"
    return result


def build_manifest(rows: pd.DataFrame, split: SplitParams, seed: int) -> pd.DataFrame:
    """Rows of (path, category, facts) -> the manifest, sorted by path, with its splits; the
    location columns are left for the shards to fill."""
    columns = [c for c in MANIFEST_COLUMNS if c not in LOCATION]
    frame = rows[[c for c in columns if c != "split"]]
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    frame["split"] = assign_splits(frame, split, seed)
    frame = frame[columns]
    frame.attrs["facts_version"] = FACTS_VERSION  # pandas keeps attrs in the parquet file
    return frame
