"""The on-disk teacher-logit cache against the teacher that filled it: every generated layout
reads back what the teacher computed (after cache_dtype's rounding, and top-k), and a build
killed with SIGKILL resumes at its first missing chunk and ends byte-equal to one built in one go.

The teacher here is a known function of (image, view), so the expected logits are written
out in numpy, independently of the code under test."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from vgg2resnet.config import UserError
from vgg2resnet.distill.logit_cache import CacheLayout, build_cache, open_cache
from vgg2resnet.training.placement import Placement

from .conftest import ROOT, repo_params

CPU = Placement(device=torch.device("cpu"))
LOADING = repo_params({"runtime": {"num_workers": 0}}).runtime


def expected_logits(images: np.ndarray, views: np.ndarray, categories: int) -> np.ndarray:
    c = np.arange(categories)
    return (8 * np.sin(0.37 * images[:, None] + 1.3 * views[:, None] + 0.61 * c)).astype(np.float32)


class Views(Dataset):
    """Item (i, view) is a 'picture' holding i and view; images from `block_from` on never load."""

    def __init__(self, n: int, block_from: int | None = None) -> None:
        self.n, self.block_from = n, block_from

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int]):
        i, view = item
        if self.block_from is not None and i >= self.block_from:
            time.sleep(3600)
        return torch.tensor([i, view], dtype=torch.float64), 0, i, view


class Teacher:
    """Logits computed from the picture alone; remembers which images it saw."""

    def __init__(self, categories: int) -> None:
        self.categories, self.seen = categories, []

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        self.seen += indices.tolist()
        return torch.from_numpy(expected_logits(images[:, 0].numpy(), images[:, 1].numpy(), self.categories))


layouts = st.builds(
    lambda images, views, categories, dtype, k, chunk: CacheLayout(images, views, categories, dtype, k, chunk),
    images=st.integers(1, 30),
    views=st.integers(1, 3),
    categories=st.integers(2, 30),
    dtype=st.sampled_from(["float16", "float32"]),
    k=st.none() | st.integers(1, 32),
    chunk=st.integers(1, 40),
)


@settings(max_examples=60, deadline=None)
@given(layout=layouts, batch_size=st.integers(1, 17))
def test_every_layout_reads_back_what_the_teacher_computed(layout: CacheLayout, batch_size: int):
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(
            Path(tmp) / "cache",
            layout,
            Teacher(layout.categories),
            Views(layout.images),
            batch_size,
            LOADING,
            CPU,
            show_progress=False,
        )
        assert sorted(p.name for p in Path(tmp, "cache").iterdir()) == sorted(
            ["layout.json"]
            + [f"values-{c:05d}.npy" for c in range(layout.chunks)]
            + ([f"indices-{c:05d}.npy" for c in range(layout.chunks)] if layout.top_k else [])
        )
        images, views = np.divmod(np.arange(layout.images * layout.views), layout.views)
        computed = expected_logits(images, views, layout.categories)
        want = computed.astype(layout.dtype).astype(np.float32)
        if layout.top_k:  # only the k largest (as computed), the rest -inf
            k = min(layout.top_k, layout.categories)
            kept = np.argsort(-computed, axis=1)[:, :k]
            shown = np.full_like(want, -np.inf)
            np.put_along_axis(shown, kept, np.take_along_axis(want, kept, axis=1), axis=1)
            want = shown
        order = np.random.default_rng(layout.images).permutation(len(images))  # any order, any chunk mix
        got = cache[torch.from_numpy(images[order]), torch.from_numpy(views[order])]
        np.testing.assert_array_equal(got.numpy(), want[order])


def test_a_cache_of_another_layout_is_refused_by_name(tmp_path: Path):
    layout = CacheLayout(6, 2, 4, "float16", None, 3)
    build_cache(tmp_path / "cache", layout, Teacher(4), Views(6), 4, LOADING, CPU, show_progress=False)
    with pytest.raises(UserError, match=r"another layout.*delete the folder"):
        open_cache(tmp_path / "cache", CacheLayout(6, 2, 4, "float32", None, 3))


KILLED = CacheLayout(images=12, views=2, categories=5, dtype="float16", top_k=3, chunk_images=4)


def test_a_build_killed_after_two_of_three_chunks_resumes_and_equals_one_built_in_one_go(tmp_path: Path, caplog):
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.test_logit_cache", str(killed), "8"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (killed / "values-00001.npy").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert sorted(p.name for p in killed.glob("*.npy")) == [
        "indices-00000.npy",
        "indices-00001.npy",
        "values-00000.npy",
        "values-00001.npy",
    ], stderr

    teacher = Teacher(KILLED.categories)
    with caplog.at_level("INFO", logger="vgg2resnet"):
        build_cache(killed, KILLED, teacher, Views(KILLED.images), 5, LOADING, CPU, show_progress=False)
    assert sorted(set(teacher.seen)) == [8, 9, 10, 11]  # only the missing chunk was computed
    assert f"2 of 3 chunks already built in {killed}" in caplog.text
    whole = tmp_path / "whole"
    build_cache(whole, KILLED, Teacher(KILLED.categories), Views(KILLED.images), 5, LOADING, CPU, show_progress=False)
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in killed.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


if __name__ == "__main__":  # the build the test above kills: images from argv[2] on never load
    build_cache(
        Path(sys.argv[1]),
        KILLED,
        Teacher(KILLED.categories),
        Views(KILLED.images, int(sys.argv[2])),
        5,
        LOADING,
        CPU,
        show_progress=False,
    )
