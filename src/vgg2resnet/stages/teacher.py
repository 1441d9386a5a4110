"""Stage `teacher`: import the user's VGG-16 checkpoint, or (the demo) train one on the train split.

    vgg2resnet teacher           # or: dvc repro teacher
"""

from __future__ import annotations

import logging

import torch

from vgg2resnet.config import Params
from vgg2resnet.data.categories import read_categories
from vgg2resnet.distill.fit import fit, record_summary
from vgg2resnet.distill.loop import evaluate
from vgg2resnet.errors import UserError
from vgg2resnet.models.builders import build_teacher
from vgg2resnet.models.checkpoint import check_categories, import_user_teacher, save_model
from vgg2resnet.runtime import start, stop
from vgg2resnet.stages.training import (
    data_categories, eval_loader, fingerprint, manifest_hash, model_meta, state_path, train_views,
)

log = logging.getLogger(__name__)


def _import(params: Params, categories: list[str]):
    tparams = params.teacher
    if tparams.categories_file is None:
        raise UserError("teacher.checkpoint is set but teacher.categories_file is not: give the JSON list "
                        "of the teacher's categories in the order of its outputs")
    teacher_categories = read_categories(tparams.categories_file)
    check_categories(teacher_categories, categories, str(tparams.checkpoint))
    log.info("importing the teacher from %s", tparams.checkpoint)
    return import_user_teacher(tparams.checkpoint, tparams.arch, teacher_categories), \
        f"user checkpoint {tparams.checkpoint}"


def run(params: Params) -> dict:
    tparams = params.teacher
    runtime = start(params.runtime)
    categories = data_categories(params)
    out = params.paths.models_dir / "teacher.pt"
    val = eval_loader(params, "val", categories, params.evaluate.batch_size, image_size=tparams.image_size)
    if tparams.checkpoint is not None:
        model, init = _import(params, categories)
        model = model.to(runtime.device)
        metrics = {f"val_{k}": v for k, v in evaluate(model, val, runtime).items()}
        if runtime.is_main:
            record_summary(params.paths.metrics_dir / "teacher", metrics)
    else:
        init = f"ImageNet weights {tparams.pretrained_weights}" if tparams.pretrained_weights else "random"
        if runtime.is_main:
            log.info("no teacher.checkpoint: training a %s teacher from %s initialisation", tparams.arch,
                     "ImageNet" if tparams.pretrained_weights else "random (no teacher.pretrained_weights)")
        torch.manual_seed(params.runtime.seed)
        model = build_teacher(tparams.arch, len(categories), tparams.pretrained_weights)
        run_id = fingerprint("teacher", tparams, params.augment, params.runtime.seed, manifest_hash(params))
        model, metrics = fit(
            model, train_views(params, tparams, categories), val, tparams, runtime, params.runtime,
            state_path=state_path(params, "teacher"), fingerprint=run_id,
            live_dir=params.paths.metrics_dir / "teacher",
        )
    if runtime.is_main:
        meta = save_model(out, model, model_meta(params, tparams.arch, categories, tparams.image_size,
                                                 init, val_accuracy=metrics["val_accuracy"]))
        log.info("teacher: val accuracy %.2f%%, %s (%.1f MB)", metrics["val_accuracy"], out,
                 meta["bytes"] / 1e6)
        # Training state is only for resuming an interrupted run; this one finished.
        (state_path(params, "teacher")).unlink(missing_ok=True)
    stop(runtime)
    return {"val_accuracy": metrics.get("val_accuracy"), "init": init}
