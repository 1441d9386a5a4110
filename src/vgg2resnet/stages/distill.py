"""Stage `distill`: train the ResNet-50 student from the VGG-16 teacher's soft labels.

    vgg2resnet distill                                    # or: dvc repro distill
    torchrun --nproc-per-node 2 -m vgg2resnet distill     # DistributedDataParallel, same code

With runtime.processes above 1 (`auto`: one per visible GPU), the command relaunches itself
through torchrun (vgg2resnet.cli), so `dvc repro` uses every GPU of the host.
"""

from __future__ import annotations

import logging
import shutil

import torch

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, train_views
from vgg2resnet.distill.teacher_signal import teacher_signal
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.builders import STUDENT_ARCH, build_student
from vgg2resnet.models.checkpoint import load_model, model_meta, read_meta, save_model
from vgg2resnet.training.averaging import kept_epochs_folder
from vgg2resnet.training.fit import RunFiles, fingerprint, fit
from vgg2resnet.training.loop import Training, evaluate
from vgg2resnet.training.placement import start, stop

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    d = params.distill
    placement = start(params.runtime)
    categories = data_categories(params)
    layout = Artifacts(params)
    teacher_path, state = layout.teacher, layout.training_state("distill")
    teacher, _ = load_model(teacher_path, categories)
    teacher_meta = read_meta(teacher_path)
    # Weights, not file bytes: the file also carries the git revision, which must not invalidate
    # the logit cache or a resumable run.
    teacher_weights = teacher_meta["weights_sha256"]
    val = eval_loader(params, "val", categories, params.evaluate.batch_size, image_size=d.image_size)
    teacher_val = evaluate(teacher.to(placement.device), val, placement)["accuracy"]

    init = f"ImageNet weights {d.pretrained_weights}" if d.pretrained_weights else "random"
    if placement.is_main and d.pretrained_weights is None:
        log.info("no distill.pretrained_weights: the ResNet-50 student starts from random initialisation")
    torch.manual_seed(params.runtime.seed)
    student = build_student(len(categories), d.pretrained_weights)
    views = train_views(params, d, categories)
    distillation = teacher_signal(params, placement, teacher, teacher_weights, views, len(categories))
    run_id = fingerprint(
        "distill", d, params.augment, params.runtime.seed, teacher_weights, manifest_hash(params), placement.world_size
    )
    training = Training(
        d,
        params.runtime,
        placement,
        distillation,
        freeze_epochs=d.freeze_epochs,
        backbone_lr_mult=d.backbone_lr_mult,
        ema_decay=d.ema_decay,
        average=d.average_best,
    )
    student, metrics = fit(student, views, val, training, RunFiles(state, run_id, layout.training_metrics("distill")))
    result = {
        "val_accuracy": metrics.get("val_accuracy_selected"),
        "selected": metrics.get("selected"),
        "teacher_val_accuracy": teacher_val,
        "init": init,
    }
    if placement.is_main:
        out = layout.student()
        meta = save_model(
            out,
            student,
            model_meta(
                params,
                STUDENT_ARCH,
                categories,
                d.image_size,
                init,
                teacher_sha256=teacher_meta["sha256"],
                val_accuracy=metrics["val_accuracy_selected"],
                ema=d.ema_decay is not None,
            ),
        )
        log.info(
            "student (%s): val accuracy %.2f%% (teacher %.2f%%), %s (%.1f MB)",
            metrics["selected"],
            metrics["val_accuracy_selected"],
            teacher_val,
            out,
            meta["bytes"] / 1e6,
        )
        # Training state is only for resuming an interrupted run; this one finished. The kept
        # epochs go after it (and whatever average_best is now), never before.
        state.unlink(missing_ok=True)
        shutil.rmtree(kept_epochs_folder(state), ignore_errors=True)
    stop(placement)
    return result
