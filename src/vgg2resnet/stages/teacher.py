"""Stage `teacher`: import the user's VGG-16 checkpoint, or (the demo) train one on the train split.

    vgg2resnet teacher           # or: dvc repro teacher

Either way the stage writes the same outputs: the model, its metadata and metrics/teacher/
(an imported teacher's evaluation on the val split; a trained one's curves as well). Before
hours of distillation it warns when the teacher is hardly better than the majority-class
baseline, and names every category it scores at or below chance on, which is what a
categories file in the wrong order looks like.
"""

from __future__ import annotations

import logging

import torch

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, train_views
from vgg2resnet.evaluation.teacher_check import teacher_check
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.builders import build_teacher
from vgg2resnet.models.checkpoint import (
    import_teacher,
    model_meta,
    save_model,
)
from vgg2resnet.training.fit import RunFiles, fingerprint, fit, record_summary
from vgg2resnet.training.loop import Training
from vgg2resnet.training.placement import start, stop

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    tparams = params.teacher
    placement = start(params.runtime)
    categories = data_categories(params)
    layout = Artifacts(params)
    out, live_dir, state = layout.teacher, layout.training_metrics("teacher"), layout.training_state("teacher")
    val = eval_loader(params, "val", categories, params.evaluate.batch_size, image_size=tparams.image_size)
    imported = tparams.checkpoint is not None
    if imported:
        model = import_teacher(params.teacher, categories).to(placement.device)
        init = f"user checkpoint {tparams.checkpoint}"
    else:
        init = f"ImageNet weights {tparams.pretrained_weights}" if tparams.pretrained_weights else "random"
        if placement.is_main:
            log.info(
                "no teacher.checkpoint: training a %s teacher from %s initialisation",
                tparams.arch,
                "ImageNet" if tparams.pretrained_weights else "random (no teacher.pretrained_weights)",
            )
        torch.manual_seed(params.runtime.seed)
        model = build_teacher(tparams.arch, len(categories), tparams.pretrained_weights)
        run_id = fingerprint("teacher", tparams, params.augment, params.runtime.seed, manifest_hash(params))
        model, _ = fit(
            model,
            train_views(params, tparams, categories),
            val,
            Training(tparams, params.runtime, placement),
            RunFiles(state, run_id, live_dir),
        )
    result = {"init": init}
    if placement.is_main:
        result.update(teacher_check(model, val, placement, params, categories, imported))
        if imported:  # a trained teacher's fit already wrote its curves and summary there
            record_summary(
                live_dir, {k: result[k] for k in ("val_accuracy", "val_majority_baseline", "val_per_category")}
            )
        meta = save_model(
            out,
            model,
            model_meta(params, tparams.arch, categories, tparams.image_size, init, val_accuracy=result["val_accuracy"]),
        )
        log.info(
            "teacher: val accuracy %.2f%% (majority-class baseline %.2f%%), %s (%.1f MB)",
            result["val_accuracy"],
            result["val_majority_baseline"],
            out,
            meta["bytes"] / 1e6,
        )
        # Training state is only for resuming an interrupted run; this one finished.
        state.unlink(missing_ok=True)
    stop(placement)
    return result
