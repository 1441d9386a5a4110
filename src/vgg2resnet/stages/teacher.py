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
from torch import nn
from torch.utils.data import DataLoader

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.categories import data_categories, read_categories
from vgg2resnet.data.datasets import eval_loader, train_views
from vgg2resnet.distill.fit import fingerprint, fit, record_summary
from vgg2resnet.distill.loop import predict
from vgg2resnet.evaluation.metrics import (
    LIKELY_CAUSES,
    at_or_below_chance,
    majority_baseline,
    margin_verdict,
    per_category_accuracy,
)
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.builders import build_teacher
from vgg2resnet.models.checkpoint import (
    check_categories,
    import_user_teacher,
    model_meta,
    save_model,
)
from vgg2resnet.runtime import Runtime, start, stop

log = logging.getLogger(__name__)


def _import(params: Params, categories: list[str]) -> nn.Module:
    """The user's teacher, checked against the data's categories."""
    tparams = params.teacher
    if tparams.categories_file is None:
        raise UserError("teacher.checkpoint is set but teacher.categories_file is not: give the JSON list "
                        "of the teacher's categories in the order of its outputs")
    teacher_categories = read_categories(tparams.categories_file)
    # prepare orders the data's categories as the teacher's file does, so this only fails when the
    # names differ (it names the missing and extra ones) or categories.json is from another run.
    check_categories(teacher_categories, categories, str(tparams.checkpoint))
    log.info("importing the teacher from %s", tparams.checkpoint)
    return import_user_teacher(tparams.checkpoint, tparams.arch, teacher_categories)


def sanity(model: nn.Module, val: DataLoader, runtime: Runtime, params: Params, categories: list[str],
           imported: bool) -> dict:
    """The teacher on the val split: top-1, the majority-class baseline, per-category top-1; warns
    when the margin is below gate.min_teacher_margin or a category is at or below chance."""
    logits = predict(model, val, runtime)
    labels = val.dataset.labels.numpy()
    predicted = logits.argmax(1).numpy()
    top1 = float(100.0 * (predicted == labels).mean())
    per_category = per_category_accuracy(predicted, labels, categories)
    baseline = majority_baseline(labels)
    result = {"val_accuracy": top1, "val_majority_baseline": baseline, "val_per_category": per_category}
    if params.gate.min_teacher_margin is not None:
        passed, reason = margin_verdict(top1, baseline, params.gate.min_teacher_margin, "val")
        if not passed:
            log.warning("the gate will refuse this teacher: %s", reason)
    weak = at_or_below_chance(per_category)
    if weak:
        shown = ", ".join(f"'{name}' {per_category[name]:.1f}%" for name in weak)
        hint = ("a categories file in the wrong order looks exactly like this; " + LIKELY_CAUSES if imported
                else "it has not learned them: train longer or start from teacher.pretrained_weights")
        log.warning("the teacher scores at or below chance (%.1f%%) on the val split for %d categor%s: %s; %s",
                    100.0 / len(categories), len(weak), "y" if len(weak) == 1 else "ies", shown, hint)
    result["val_at_or_below_chance"] = weak
    return result


def run(params: Params) -> dict:
    tparams = params.teacher
    runtime = start(params.runtime)
    categories = data_categories(params)
    layout = Artifacts(params)
    out, live_dir, state = layout.teacher, layout.training_metrics("teacher"), layout.training_state("teacher")
    val = eval_loader(params, "val", categories, params.evaluate.batch_size, image_size=tparams.image_size)
    imported = tparams.checkpoint is not None
    if imported:
        model = _import(params, categories).to(runtime.device)
        init = f"user checkpoint {tparams.checkpoint}"
    else:
        init = f"ImageNet weights {tparams.pretrained_weights}" if tparams.pretrained_weights else "random"
        if runtime.is_main:
            log.info("no teacher.checkpoint: training a %s teacher from %s initialisation", tparams.arch,
                     "ImageNet" if tparams.pretrained_weights else "random (no teacher.pretrained_weights)")
        torch.manual_seed(params.runtime.seed)
        model = build_teacher(tparams.arch, len(categories), tparams.pretrained_weights)
        run_id = fingerprint("teacher", tparams, params.augment, params.runtime.seed, manifest_hash(params))
        model, _ = fit(
            model, train_views(params, tparams, categories), val, tparams, runtime, params.runtime,
            state_path=state, fingerprint=run_id, live_dir=live_dir,
        )
    result = {"init": init}
    if runtime.is_main:
        result.update(sanity(model, val, runtime, params, categories, imported))
        if imported:  # a trained teacher's fit already wrote its curves and summary there
            record_summary(live_dir, {k: result[k] for k in ("val_accuracy", "val_majority_baseline",
                                                             "val_per_category")})
        meta = save_model(out, model, model_meta(params, tparams.arch, categories, tparams.image_size,
                                                 init, val_accuracy=result["val_accuracy"]))
        log.info("teacher: val accuracy %.2f%% (majority-class baseline %.2f%%), %s (%.1f MB)",
                 result["val_accuracy"], result["val_majority_baseline"], out, meta["bytes"] / 1e6)
        # Training state is only for resuming an interrupted run; this one finished.
        state.unlink(missing_ok=True)
    stop(runtime)
    return result
