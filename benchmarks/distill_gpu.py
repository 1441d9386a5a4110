"""Distillation speed on one GPU at 224 px: student images/s for a plain fine-tune, KD with a
live VGG-16 and KD from the on-disk logit cache, each under bf16 autocast + channels_last,
then again with torch.compile; and the cache build's images/s (the VGG-16 forward).

    python benchmarks/distill_gpu.py                       # about 5 minutes on one GPU
    python benchmarks/distill_gpu.py --image-size 32 --batch-size 4 --steps 2 --categories 10  # CPU smoke run

Runs by hand (not in CI), on a bare GPU host: it imports only the training core, which needs
torch, torchvision, numpy, pydantic, PyYAML and tqdm (for a host without the last three, carry
their wheels: `pip download -d wheels pydantic pyyaml tqdm`). The images are random tensors made
on the device once, so the data loader is not what is measured (benchmarks/data_throughput.py
measures it). Every mode runs the project's own training step (`train_one_epoch`), with random
weights: speed, not accuracy. Goals on one H100: KD cached >= 2,500 img/s and >= 0.9x plain.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vgg2resnet.config import load_params
from vgg2resnet.distill.logit_cache import CacheLayout, build_cache
from vgg2resnet.distill.teacher_signal import CachedTeacher, LiveTeacher
from vgg2resnet.models.builders import build_student, build_teacher
from vgg2resnet.training.loop import Training, Updates, train_one_epoch
from vgg2resnet.training.objective import Distillation
from vgg2resnet.training.placement import Placement


class Pairs(Dataset):
    """(image, view) -> a stand-in item: the cache build below is timed through the VGG-16
    forward on device batches, so its loader only needs the indices."""

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        return torch.zeros(1), 0, *item


class RandomLogits:
    """Fills the lookup cache fast: its values do not change how fast they are read."""

    def __init__(self, categories: int) -> None:
        self.categories = categories

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(indices), self.categories)


def device_batches(args: argparse.Namespace, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """`steps` batches over distinct image indices; the pixels are shared, made once on the device."""
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(args.categories, (args.batch_size,), device=device)
    return [
        (
            images,
            labels,
            torch.arange(s * args.batch_size, (s + 1) * args.batch_size),
            torch.zeros(args.batch_size, dtype=torch.long),
        )
        for s in range(args.steps)
    ]


def student_images_per_s(args, placement: Placement, batches, teacher, compiled: bool) -> float:
    """A fresh ResNet-50's images/s over the batches, after one untimed pass (warm-up, compile)."""
    torch.manual_seed(0)
    student = build_student(args.categories).to(placement.device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model = torch.compile(student) if compiled else student
    params = load_params()
    training = Training(
        params.distill.model_copy(update={"label_smoothing": 0.0, "grad_clip_norm": None, "max_steps_per_epoch": None}),
        params.runtime.model_copy(update={"channels_last": True}),
        placement,
        Distillation(teacher, 4.0, 0.5) if teacher else None,
    )
    for desc in ("warm-up", "timed"):
        metrics = train_one_epoch(model, batches, Updates(optimizer, scheduler), training, desc=desc)
    return metrics["images_per_s"]


def synchronized(placement: Placement) -> float:
    """perf_counter once the device has finished what was queued: CUDA runs ahead of Python."""
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


@torch.no_grad()
def teacher_images_per_s(live: LiveTeacher, batches, placement: Placement) -> float:
    """The cache build's cost: the VGG-16 forward over the batches, after one untimed batch."""
    images, _, indices, views = batches[0]
    live(images, indices, views)
    start = synchronized(placement)
    for images, _, indices, views in batches:
        live(images.contiguous(memory_format=torch.channels_last), indices, views)
    return len(batches) * len(batches[0][0]) / (synchronized(placement) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per mode")
    parser.add_argument("--categories", type=int, default=1000)
    args = parser.parse_args()

    placement = Placement(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name() if placement.device.type == "cuda" else "CPU (no GPU figures)"
    print(
        f"{name}; torch {torch.__version__}; {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} steps per mode",
        flush=True,
    )
    batches = device_batches(args, placement.device)
    teacher = build_teacher("vgg16", args.categories).to(memory_format=torch.channels_last)
    live = LiveTeacher(teacher, placement)
    print(f"cache build (VGG-16 forward): {teacher_images_per_s(live, batches, placement):8.1f} img/s", flush=True)

    runtime = load_params().runtime.model_copy(update={"num_workers": 0})
    with tempfile.TemporaryDirectory(prefix="distill-gpu-") as work:
        layout = CacheLayout(args.steps * args.batch_size, 1, args.categories, "float16", None, 2048)
        cache = build_cache(
            Path(work) / "cache",
            layout,
            RandomLogits(args.categories),
            Pairs(),
            args.batch_size,
            runtime,
            placement,
            show_progress=False,
        )
        cached = CachedTeacher(cache, live, tolerance=0.0)
        for compiled in (False, True) if placement.device.type == "cuda" else (False,):
            how = (
                ("bf16" if placement.device.type == "cuda" else "fp32")
                + " + channels_last"
                + (" + torch.compile" if compiled else "")
            )
            plain = student_images_per_s(args, placement, batches, None, compiled)
            print(f"{how}: plain fine-tune     {plain:8.1f} img/s", flush=True)
            kd_live = student_images_per_s(args, placement, batches, live, compiled)
            print(f"{how}: KD, live VGG-16     {kd_live:8.1f} img/s  {kd_live / plain:.2f}x plain", flush=True)
            kd_cached = student_images_per_s(args, placement, batches, cached, compiled)
            print(f"{how}: KD, cached logits   {kd_cached:8.1f} img/s  {kd_cached / plain:.2f}x plain", flush=True)
            print(f"kd_cached_vs_plain{'_compiled' if compiled else ''}={kd_cached / plain:.2f}")


if __name__ == "__main__":
    main()
