"""Stage `prune`: a smaller and faster student. The distilled ResNet-50 loses whole convolution
channels until its FLOPs are at most prune.flops_ratio of what they were (vgg2resnet.compress.prune),
is fine-tuned for prune.epochs with the distill stage's KD loss and teacher signal (its logit
cache is reused, not rebuilt), and is exported to ONNX fp32 and int8 like the student
(`pruned_fp32`, `pruned_int8`), for the gate to judge beside the other forms.

    vgg2resnet prune             # or: dvc repro prune

The fine-tune resumes after a kill like distill does. With prune.enabled: false the stage
only writes models/pruned/prune.json saying so, and the gate weighs the other forms.
"""

from __future__ import annotations

import logging
import shutil

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.compress.export import export_forms
from vgg2resnet.compress.prune import prune_to_flops
from vgg2resnet.config import PRUNED_VARIANTS, Params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, train_views
from vgg2resnet.distill.teacher_signal import teacher_signal
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.checkpoint import load_model, read_meta, weights_sha256
from vgg2resnet.training.fit import RunFiles, fingerprint, fit, record_summary
from vgg2resnet.training.loop import Training, evaluate
from vgg2resnet.training.placement import start, stop

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    p, d = params.prune, params.distill
    layout = Artifacts(params)
    # Forms of an earlier run must not outlive the settings that made them.
    shutil.rmtree(layout.pruned_dir, ignore_errors=True)
    layout.pruned_dir.mkdir(parents=True, exist_ok=True)
    if not p.enabled:
        record = {"enabled": False}
        record_summary(layout.training_metrics("prune"), record)
        atomic.write_json(layout.pruning_record, record)
        log.info("prune.enabled is false: no pruned forms; the gate weighs the others")
        return record

    placement = start(params.runtime)
    categories = data_categories(params)
    student, _ = load_model(layout.student(), categories)
    source = read_meta(layout.student())
    teacher, _ = load_model(layout.teacher, categories)
    teacher_weights = read_meta(layout.teacher)["weights_sha256"]
    pruning = prune_to_flops(student, d.image_size, p.flops_ratio, p.round_to)

    val = eval_loader(params, "val", categories, params.evaluate.batch_size, image_size=d.image_size)
    pruned_val = evaluate(student.to(placement.device), val, placement)["accuracy"]
    views = train_views(params, d, categories)
    # distill's recipe, shorter and gentler: the network starts trained.
    train = d.model_copy(update={"epochs": p.epochs, "lr": p.lr, "warmup_epochs": 0.0})
    run_id = fingerprint(
        "prune",
        train,
        p,
        params.augment,
        params.runtime.seed,
        source["weights_sha256"],
        teacher_weights,
        manifest_hash(params),
        placement.world_size,
    )
    state = layout.training_state("prune")
    distillation = teacher_signal(params, placement, teacher, teacher_weights, views, len(categories))
    model, metrics = fit(
        student,
        views,
        val,
        Training(train, params.runtime, placement, distillation),
        RunFiles(state, run_id, layout.training_metrics("prune")),
    )
    record = {
        "enabled": True,
        **{k: v for k, v in pruning.items() if k != "channels"},
        "val_accuracy_student": source["val_accuracy"],
        "val_accuracy_pruned": pruned_val,
        "val_accuracy": metrics.get("val_accuracy_final"),
        "channels": pruning["channels"],
    }
    if placement.is_main:
        model = model.float().cpu()
        record["parity"] = export_forms(
            params,
            model,
            source,
            {v: layout.student(v) for v in PRUNED_VARIANTS},
            categories,
            weights_sha256=weights_sha256(model.state_dict()),
            val_accuracy=record["val_accuracy"],
            flops=pruning["flops"],
            parameters=pruning["parameters"],
            pruning={k: record[k] for k in ("flops_ratio", "channel_share_removed", "features")},
        )
        atomic.write_json(layout.pruning_record, record)
        log.info(
            "pruned student: val accuracy %.2f%% after pruning, %.2f%% after %d fine-tune epochs "
            "(student %.2f%%), %.3fx the FLOPs",
            pruned_val,
            record["val_accuracy"],
            p.epochs,
            source["val_accuracy"],
            pruning["flops_ratio"],
        )
        state.unlink(missing_ok=True)  # only for resuming an interrupted fine-tune
    stop(placement)
    return {k: v for k, v in record.items() if k != "channels"}
