"""Distillation throughput: plain fine-tune vs KD with a live teacher vs KD with the logit cache.

    python benchmarks/distill_throughput.py --images 256 --image-size 224 --batch-size 16

Runs by hand (not in CI). Each mode trains one epoch of a fresh ResNet-50 over the same images
through the project's own training loop; ratios are against the plain epoch measured in the
same run. Needs `vgg2resnet prepare` (the demo data) to have run.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import load_params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import ImageDataset, split_rows, train_views
from vgg2resnet.data.loaders import make_loader
from vgg2resnet.distill.logit_cache import CacheLayout, build_cache
from vgg2resnet.distill.teacher_signal import CachedTeacher, LiveTeacher
from vgg2resnet.models.builders import build_student, build_teacher
from vgg2resnet.training.loop import Training, Updates, build_optimizer, build_scheduler, epoch_items, train_one_epoch
from vgg2resnet.training.objective import Distillation
from vgg2resnet.training.placement import Placement, select_device


def one_epoch(views, placement, runtime, params, teacher, cache_views, num_classes) -> float:
    torch.manual_seed(0)
    student = build_student(num_classes).to(placement.device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(student, params)
    steps = -(-len(views) // params.batch_size)
    scheduler = build_scheduler(optimizer, params, steps)
    items = epoch_items(len(views), 0, 0, cache_views, placement)
    loader = make_loader(views, runtime, params.batch_size, items)
    start = time.perf_counter()
    plain = params.model_copy(update={"label_smoothing": 0.0, "grad_clip_norm": None, "max_steps_per_epoch": None})
    distillation = Distillation(teacher, 4.0, 0.5) if teacher else None
    train_one_epoch(
        student,
        loader,
        Updates(optimizer, scheduler),
        Training(plain, runtime.model_copy(update={"channels_last": True}), placement, distillation),
        desc="bench",
    )
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    return len(views) / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--views", type=int, default=2)
    args = parser.parse_args()

    params = load_params()
    dparams = params.distill.model_copy(
        update={"image_size": args.image_size, "batch_size": args.batch_size, "epochs": 1, "warmup_epochs": 0}
    )
    categories = data_categories(params)
    views = train_views(params, dparams, categories)
    views.images = ImageDataset(split_rows(params, "train").iloc[: args.images], params.data.raw_dir, categories, None)
    placement = Placement(device=select_device(params.runtime))
    teacher = build_teacher("vgg16", len(categories)).eval()  # random weights: speed, not accuracy
    live = LiveTeacher(teacher, placement)

    print(f"device {placement.device}, {len(views)} images at {args.image_size} px, batch {args.batch_size}")
    plain = one_epoch(views, placement, params.runtime, dparams, None, None, len(categories))
    print(f"plain ResNet-50 epoch:        {plain:7.2f} img/s  1.00x time")
    kd_live = one_epoch(views, placement, params.runtime, dparams, live, None, len(categories))
    print(f"KD, live VGG-16 teacher:      {kd_live:7.2f} img/s  {plain / kd_live:.2f}x time")
    start = time.perf_counter()
    folder = Artifacts(params).logit_cache("benchmark")
    shutil.rmtree(folder, ignore_errors=True)
    layout = CacheLayout(
        len(views), args.views, len(categories), dparams.cache_dtype, dparams.cache_top_k, dparams.cache_chunk_images
    )
    logits = build_cache(folder, layout, live, views, args.batch_size, params.runtime, placement, False)
    build = time.perf_counter() - start
    print(
        f"cache build ({args.views} views):     {build:7.2f} s      {build / (len(views) / plain):.2f}x a plain epoch"
    )
    cached = CachedTeacher(logits, live, 1e-3)
    kd_cached = one_epoch(views, placement, params.runtime, dparams, cached, args.views, len(categories))
    print(f"KD, cached teacher logits:    {kd_cached:7.2f} img/s  {plain / kd_cached:.2f}x time")
    shutil.rmtree(folder)
