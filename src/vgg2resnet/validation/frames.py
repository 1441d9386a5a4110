"""The tables Great Expectations validates: the manifest with derived leakage columns, and counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vgg2resnet.data.manifest import SPLITS
from vgg2resnet.data.policy import aspect_ratio


def _band_pairs(hashes: np.ndarray, shift: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i before j, of the hashes whose bits [shift, shift + width) are equal:
    sorted by that band, each group's members are paired with the ones k places after them, for
    k = 1, 2, ... while some group is larger than k. The work is the pairs, not n^2."""
    band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(band, kind="stable")
    keys = band[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    size = np.repeat(sizes, sizes)  # each sorted position's group size
    rank = np.arange(len(keys)) - np.repeat(starts, sizes)  # its place in its group
    firsts, seconds = [], []
    active = np.flatnonzero(size > 1)
    for k in range(1, int(sizes.max(initial=1))):
        active = active[rank[active] + k < size[active]]
        firsts.append(order[active])
        seconds.append(order[active + k])
    if not firsts:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    return np.concatenate(firsts), np.concatenate(seconds)


def _near_duplicate_across_splits(frame: pd.DataFrame, max_distance: int) -> np.ndarray:
    """True where an image's dhash lies within max_distance bits of an image in another split.

    Exact, without comparing all pairs (multi-index hashing, Norouzi et al., 2012): cut the 64
    bits into max_distance + 1 bands; two hashes within max_distance bits agree exactly on at
    least one band (pigeonhole), so only hashes sharing a band are compared. Identical hashes
    are compared once: each distinct hash carries the set of splits holding it, as a bit mask.
    At the default distance 0 that is one band, the whole hash, and linear time; each further
    bit of distance halves the band width, so the candidate pairs grow with it.
    """
    valid = (frame["dhash"].astype(str).str.len() == 16).to_numpy()
    values = np.array([int(h, 16) if ok else 0 for h, ok in zip(frame["dhash"], valid)], dtype=np.uint64)
    split_bit = np.left_shift(1, pd.Categorical(frame["split"], categories=SPLITS).codes.astype(np.int64))
    hashes, inverse = np.unique(values[valid], return_inverse=True)
    splits = np.zeros(len(hashes), dtype=np.int64)  # the splits holding each distinct hash
    np.bitwise_or.at(splits, inverse, split_bit[valid])
    near = splits.copy()  # the splits holding a hash within max_distance bits of it
    if max_distance >= 64:  # every two hashes are within 64 bits
        near[:] = np.bitwise_or.reduce(splits) if len(splits) else 0
    else:
        bands = max_distance + 1
        widths = [64 // bands + (band < 64 % bands) for band in range(bands)]
        for shift, width in zip(np.cumsum([0, *widths[:-1]]), widths):
            first, second = _band_pairs(hashes, int(shift), width)
            close = np.bitwise_count(hashes[first] ^ hashes[second]) <= max_distance
            np.bitwise_or.at(near, first[close], splits[second[close]])
            np.bitwise_or.at(near, second[close], splits[first[close]])
    flags = np.zeros(len(frame), dtype=bool)
    flags[valid] = (near[inverse] & ~split_bit[valid]) != 0
    return flags


def manifest_frame(manifest: pd.DataFrame, near_duplicate_max_distance: int, root: Path) -> pd.DataFrame:
    """The manifest plus derived columns, with undecoded images' facts as nulls (checked separately).
    Paths are the files' paths under root (the user's folder), so every finding names the original."""
    frame = manifest.copy()
    frame["path"] = [None if pd.isna(p) else str(root / p) for p in frame["path"]]  # not_null judges a null
    broken = ~frame["decodes"].astype(bool)
    for column in ("width", "height"):
        frame[column] = frame[column].astype("float").mask(broken)
    frame["mode"] = frame["mode"].mask(broken)
    frame["aspect_ratio"] = aspect_ratio(frame["width"], frame["height"])
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
