"""The one DataLoader factory: every loader goes through it, workers keep seeded views exact,
and the training core runs where only torch and torchvision are installed."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import v2

from vgg2resnet.config import AugmentParams
from vgg2resnet.data.datasets import ImageDataset, SeededViews, sample_rows, view_seed
from vgg2resnet.data.loaders import EpochItems, make_loader, with_progress
from vgg2resnet.data.transforms import train_transform
from vgg2resnet.training.loop import predict
from vgg2resnet.training.placement import Placement

from .conftest import ROOT, make_image_folder, repo_params
from .userdata import packed

PACKAGE = ROOT / "src" / "vgg2resnet"
ORCHESTRATION = ("dvc", "dvclive", "bentoml", "prefect", "great_expectations", "evidently")


def test_every_dataloader_of_the_package_is_built_by_the_factory():
    built = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "DataLoader"
            ):
                built.append(path.relative_to(PACKAGE).as_posix())
    assert built == ["data/loaders.py"]


@given(
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=15),
    limit=st.integers(1, 600),
    seed=st.integers(0, 2**32 - 1),
    interleave=st.booleans(),
)
def test_a_sample_is_bounded_stratified_seeded_and_in_the_rows_order(sizes, limit: int, seed: int, interleave: bool):
    categories = [f"c{i}" for i, n in enumerate(sizes) for _ in range(n)]
    if interleave:  # a row's category is not known from its position
        categories = [categories[i] for i in np.random.default_rng(seed).permutation(len(categories))]
    rows = pd.DataFrame({"path": [f"{i:05d}.png" for i in range(len(categories))], "category": categories})
    sample = sample_rows(rows, limit, seed)
    assert len(sample) == min(limit, len(rows))
    assert sample["path"].is_unique and set(sample["path"]) <= set(rows["path"])
    assert sample["path"].is_monotonic_increasing
    pd.testing.assert_frame_equal(sample, sample_rows(rows, limit, seed))
    counts = sample["category"].value_counts()
    for i, n in enumerate(sizes):
        assert abs(counts.get(f"c{i}", 0) - len(sample) * n / len(rows)) < 1
    assert sample_rows(rows, None, seed) is rows


def test_progress_counts_every_image_of_every_batch(capsys):
    class Batches(list):  # what with_progress reads of a DataLoader
        dataset = range(9)

    batches = Batches([(torch.zeros(n, 3), n) for n in (4, 4, 1)])
    assert list(with_progress(batches, "nine")) == list(batches)
    assert "9/9" in capsys.readouterr().err


class _Labelled(torch.utils.data.Dataset):
    """(features, label, index) items, as the image datasets give them."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.features[i], self.labels[i], i


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 60), batch_size=st.integers(1, 17), categories=st.integers(2, 9), seed=st.integers(0, 99))
def test_predict_gives_every_items_category_and_the_mean_loss_of_the_whole_logits(
    size: int, batch_size: int, categories: int, seed: int
):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(size, 5, generator=generator)
    labels = torch.randint(categories, (size,), generator=generator)
    model = torch.nn.Linear(5, categories)
    loader = make_loader(
        _Labelled(features, labels), repo_params({}).runtime.model_copy(update={"num_workers": 0}), batch_size
    )
    predictions = predict(model, loader, Placement(device=torch.device("cpu")))
    with torch.no_grad():
        logits = model(features)
    assert torch.equal(predictions.classes, logits.argmax(1)) and torch.equal(predictions.labels, labels)
    assert predictions.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert predictions.accuracy == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())


def test_auto_workers_are_the_cores_this_process_may_use():
    """A child process started on one of this process's cores (its affinity set before it runs,
    as `taskset` does), then moved onto other sets of them: with num_workers auto it counts the
    cores of its set each time, whatever the machine has."""
    cores = sorted(os.sched_getaffinity(0))
    subsets = [[core] for core in cores[:3]] + [cores[:2], cores]
    script = f"""
import os
from vgg2resnet.config import load_params
from vgg2resnet.data.loaders import worker_count
runtime = load_params({str(ROOT / "params.yaml")!r}).runtime.model_copy(update={{"num_workers": "auto"}})
for subset in {subsets[1:]!r}:
    print(worker_count(runtime), end=" ")
    os.sched_setaffinity(0, subset)
print(worker_count(runtime), worker_count(runtime.model_copy(update={{"num_workers": 3}})))
"""
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, subsets[0]),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [str(len(set(subset))) for subset in subsets] + ["3"], (subsets, child.stdout)


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> SeededViews:
    root = make_image_folder(tmp_path_factory.mktemp("views") / "digits", per_category=3, size=40)
    rows = packed(root, [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.png"))], root.parent / "raw")
    augment = repo_params().augment.model_dump()
    dataset = ImageDataset(rows, root.parent / "raw", sorted(rows["category"].unique()), None)
    return SeededViews(dataset, train_transform(24, AugmentParams(**augment)), seed=7)


def test_persistent_workers_serve_each_epochs_items_as_zero_workers_do(views: SeededViews):
    """One loader, two workers kept across epochs, items swapped per epoch: the same batches,
    bit for bit, as a loader without workers."""
    runtime = repo_params().runtime
    epochs = [
        [(i, (i + e) % 3) for i in torch.randperm(len(views), generator=torch.Generator().manual_seed(e)).tolist()]
        for e in range(3)
    ]
    batches = {}
    for workers in (0, 2):
        items = EpochItems()
        loader = make_loader(views, runtime.model_copy(update={"num_workers": workers}), 8, items)
        assert loader.persistent_workers == (workers > 0)
        batches[workers] = []
        for epoch in epochs:
            items.set_items(epoch)
            batches[workers].append([(images, indices, view_ids) for images, _, indices, view_ids in loader])
    for epoch, zero, two in zip(epochs, batches[0], batches[2]):
        assert len(zero) == len(two) == 4
        assert torch.cat([indices for _, indices, _ in two]).tolist() == [i for i, _ in epoch]
        for (a, ia, va), (b, ib, vb) in zip(zero, two):
            assert torch.equal(ia, ib) and torch.equal(va, vb) and torch.equal(a, b)


def test_a_seeded_view_is_the_transform_under_torch_manual_seed_of_its_view_seed(views: SeededViews):
    """The definition a user can reproduce by hand: seed torch with view_seed(seed, i, view),
    apply the transform. Views in the main process also leave its RNG where it was."""
    before = torch.get_rng_state()
    served = [views[i, view][0] for i in range(len(views)) for view in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    expected = []
    for i in range(len(views)):
        for view in range(2):
            torch.manual_seed(view_seed(views.seed, i, view))
            expected.append(views.transform(views.images.image(i)))
    assert all(torch.equal(a, b) for a, b in zip(served, expected))
    assert not torch.equal(served[0], served[1])  # two views of one image differ


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    height=st.integers(16, 300),
    width=st.integers(16, 300),
    size=st.integers(8, 64),
    hflip=st.booleans(),
)
def test_a_view_is_the_plain_uint8_pipeline_up_to_rounding(seed: int, height: int, width: int, size: int, hflip: bool):
    """train_transform jitters and rotates in float for speed. Under one seed its view is the
    view of torchvision's documented order (every augmentation on uint8, then float): the same
    crop, flip, angle and jitter factors. Each of the three uint8 jitter steps truncates to a
    whole level (an error under 1) and scales the error before it by at most 1 + 2 * jitter; a
    single mismatched draw differs by tens of levels."""
    augment = repo_params({"augment": {"hflip": hflip}}).augment
    jitter = augment.color_jitter
    plain = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(augment.crop_scale_min, 1.0), antialias=True),
            *([v2.RandomHorizontalFlip()] if hflip else []),
            v2.RandomRotation(augment.rotation_degrees, fill=255),
            v2.ColorJitter(jitter, jitter, jitter),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(augment.mean), list(augment.std)),
        ]
    )
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    views = []
    for transform in (train_transform(size, augment), plain):
        torch.manual_seed(seed)
        views.append(transform(image))
    in_pixel_levels = (views[0] - views[1]).abs() * torch.tensor(augment.std).view(3, 1, 1) * 255
    bound = 0.0
    for _ in range(3):
        bound = bound * (1 + 2 * jitter) + 1
    assert in_pixel_levels.max() < bound


def test_the_training_core_imports_and_trains_without_the_orchestration_packages(tmp_path: Path):
    """A bare GPU host has torch and torchvision, not DVC, BentoML, Prefect, GX or Evidently."""
    script = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ORCHESTRATION!r}:
            raise ImportError(f"{{name}} is not installed on this host")
sys.meta_path.insert(0, Blocked())
import torch
import vgg2resnet.data.datasets, vgg2resnet.data.loaders, vgg2resnet.data.transforms
import vgg2resnet.models.builders, vgg2resnet.models.checkpoint
import vgg2resnet.training.loop, vgg2resnet.training.fit, vgg2resnet.training.objective
import vgg2resnet.distill.teacher_signal
import vgg2resnet.training.placement
from vgg2resnet.config import load_params
from vgg2resnet.training.loop import Training, Updates, build_optimizer, build_scheduler, train_one_epoch
from vgg2resnet.training.objective import Distillation
from vgg2resnet.models.builders import build_student
from vgg2resnet.training.placement import Placement
params = load_params({str(ROOT / "params.yaml")!r})
student = build_student(4)
optimizer = build_optimizer(student, params.distill)
batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), torch.tensor([0, 1]), torch.tensor([0, 0]))
metrics = train_one_epoch(student, [batch], Updates(optimizer, build_scheduler(optimizer, params.distill, 1)),
                          Training(params.distill, params.runtime, Placement(torch.device("cpu")),
                                   Distillation(lambda images, i, v: torch.randn(2, 4), 4.0, 0.5)),
                          desc="bare host")
assert metrics["steps"] == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
assert not [m for m in sys.modules if m.split(".")[0] in {ORCHESTRATION!r}]
print("trained")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "trained" in result.stdout
