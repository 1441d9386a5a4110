"""Stage `compress`: the student as an fp32 ONNX graph and as an int8 one, each checked.

    vgg2resnet compress          # or: dvc repro compress

The fp32 export must reproduce PyTorch on the val split within compress.parity_*: a larger gap
is an export bug and stops the stage. The int8 variant is calibrated on a seeded sample of the
train split only (val and test stay unseen); its parity is recorded, not enforced here: the gate
judges it like every other candidate, on the test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.compress.onnx import export_onnx, parity, quantize_int8
from vgg2resnet.config import VARIANTS, Params, UserError
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, split_dataset
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import load_model, read_meta, write_sidecar
from vgg2resnet.models.variants import OnnxRunner, TorchRunner, predict_logits

log = logging.getLogger(__name__)
CALIBRATION_SPLIT = "train"
CPU = torch.device("cpu")


def calibration_sample(params: Params, dataset) -> list[int]:
    """A seeded sample of the train split, the only images calibration may see."""
    count = min(params.compress.calibration_images, len(dataset))
    rng = np.random.default_rng(params.data.seed)
    return sorted(rng.choice(len(dataset), size=count, replace=False).tolist())


def _batches(loader: DataLoader) -> Iterator[np.ndarray]:
    for images, *_ in loader:
        yield images.numpy()


def quantize_on_train_sample(params: Params, fp32: Path, int8: Path, categories: list[str],
                             transform: Callable) -> dict:
    """Quantize an fp32 export to int8, calibrated on the seeded train sample; return what it was
    calibrated on (split, method and image paths)."""
    c = params.compress
    train = split_dataset(params, CALIBRATION_SPLIT, categories, transform)
    sample = calibration_sample(params, train)
    log.info("quantizing to int8 (%s calibration on %d %s images) -> %s", c.calibration_method, len(sample),
             CALIBRATION_SPLIT, int8)
    quantize_int8(fp32, int8, _batches(DataLoader(Subset(train, sample), batch_size=c.calibration_batch_size)),
                  c.calibration_method, c.per_channel)
    return {"split": CALIBRATION_SPLIT, "method": c.calibration_method, "per_channel": c.per_channel,
            "paths": [str(train.paths[i].relative_to(params.data.raw_dir)) for i in sample]}


def _sidecar_meta(student: dict, variant: str, **extra) -> dict:
    keep = {k: v for k, v in student.items() if k not in ("sha256", "bytes")}
    return {**keep, "variant": variant, "source_sha256": student["sha256"], **extra}


def run(params: Params) -> dict:
    c = params.compress
    categories = data_categories(params)
    layout = Artifacts(params)
    source = layout.student("pytorch_fp32")
    model, meta = load_model(source, categories)
    student = read_meta(source)
    transform = transform_from_meta(meta["preprocessing"])
    size = meta["preprocessing"]["image_size"]

    fp32 = layout.student("onnx_fp32")
    log.info("exporting %s to ONNX (opset %d) -> %s", source, c.opset, fp32)
    export_onnx(model, fp32, size, c.opset)

    val = eval_loader(params, "val", categories, params.evaluate.batch_size, transform)
    reference = predict_logits(TorchRunner(model, CPU), val)
    fp32_parity = parity(reference, predict_logits(OnnxRunner(fp32, CPU), val))
    if fp32_parity["max_abs_logit"] > c.parity_max_abs_logit or fp32_parity["agreement"] < c.parity_min_agreement:
        fp32.unlink()
        raise UserError(
            f"{fp32}: the ONNX export does not reproduce PyTorch on the val split (max abs logit difference "
            f"{fp32_parity['max_abs_logit']:.3g} vs compress.parity_max_abs_logit {c.parity_max_abs_logit:.3g}, "
            f"top-1 agreement {fp32_parity['agreement']:.2f}% vs compress.parity_min_agreement "
            f"{c.parity_min_agreement}%); try another compress.opset")
    write_sidecar(fp32, _sidecar_meta(student, "onnx_fp32", opset=c.opset, parity=fp32_parity))

    int8 = layout.student("onnx_int8")
    calibration = quantize_on_train_sample(params, fp32, int8, categories, transform)
    int8_parity = parity(reference, predict_logits(OnnxRunner(int8, CPU), val))
    write_sidecar(int8, _sidecar_meta(student, "onnx_int8", opset=c.opset, calibration=calibration,
                                      parity=int8_parity))
    sizes = {v: layout.student(v).stat().st_size / 1e6 for v in VARIANTS}
    log.info("val parity vs PyTorch: fp32 ONNX max |dlogit| %.2g, agreement %.2f%%; int8 max |dlogit| %.2g, "
             "agreement %.2f%%; sizes %s MB", fp32_parity["max_abs_logit"], fp32_parity["agreement"],
             int8_parity["max_abs_logit"], int8_parity["agreement"],
             ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
    return {"onnx_fp32": fp32_parity, "onnx_int8": int8_parity, "size_mb": sizes}
