"""The tables Great Expectations validates: the manifest with derived leakage columns, and counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vgg2resnet.data.manifest import SPLITS


def _near_duplicate_across_splits(frame: pd.DataFrame, max_distance: int, block: int = 1024) -> np.ndarray:
    """True where an image's dhash lies within max_distance bits of an image in another split.

    Blocked pairwise Hamming distances: O(n^2) bit operations, a second or so for 10^4 images.
    """
    flags = np.zeros(len(frame), dtype=bool)
    valid = frame["dhash"].astype(str).str.len() == 16
    hashes = np.array([int(h, 16) if ok else 0 for h, ok in zip(frame["dhash"], valid)], dtype=np.uint64)
    splits = frame["split"].to_numpy()
    index = np.flatnonzero(valid.to_numpy())
    for start in range(0, len(index), block):
        rows = index[start:start + block]
        xor = hashes[rows, None] ^ hashes[None, index]
        distance = np.bitwise_count(xor)
        other_split = splits[rows, None] != splits[None, index]
        flags[rows] = ((distance <= max_distance) & other_split).any(axis=1)
    return flags


def manifest_frame(manifest: pd.DataFrame, near_duplicate_max_distance: int, root: Path) -> pd.DataFrame:
    """The manifest plus derived columns, with undecoded images' facts as nulls (checked separately).
    Paths are the files' paths under root (the user's folder), so every finding names the original."""
    frame = manifest.copy()
    frame["path"] = [str(root / p) for p in frame["path"]]
    broken = ~frame["decodes"].astype(bool)
    for column in ("width", "height"):
        frame[column] = frame[column].astype("float").mask(broken)
    frame["mode"] = frame["mode"].mask(broken)
    splits_per_hash = frame.groupby("sha256")["split"].transform("nunique")
    frame["duplicate_across_splits"] = splits_per_hash > 1
    frame["duplicate_within_split"] = frame.duplicated(["sha256", "split"], keep=False)
    frame["near_duplicate_across_splits"] = (
        _near_duplicate_across_splits(frame, near_duplicate_max_distance) & ~frame["duplicate_across_splits"]
    )
    return frame


def skipped_frame(skipped: list[dict]) -> pd.DataFrame:
    """The files prepare left out for not decoding, one row each (an empty table when none)."""
    frame = pd.DataFrame(skipped, columns=["path", "category", "error"])
    frame["decodes"] = False
    return frame


def category_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per category: images per split, total, and total relative to the smallest category."""
    counts = pd.crosstab(manifest["category"], manifest["split"]).reindex(columns=list(SPLITS), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["ratio_to_smallest"] = counts["total"] / max(int(counts["total"].min()), 1)
    return counts.reset_index()
