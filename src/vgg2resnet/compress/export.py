"""A trained student network as its two served ONNX forms, each checked and described.

Both the distilled student (`compress`) and its pruned descendant (`prune`) go through here:
an fp32 export that must reproduce PyTorch on the val split within compress.parity_* (a larger
gap is an export bug and stops the stage), then an int8 quantization calibrated on a seeded
sample of the train split only (val and test stay unseen), whose parity is recorded, not
enforced: the gate judges it like every other candidate, on the test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from vgg2resnet.compress.onnx import export_onnx, parity, quantize_int8
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.datasets import ImageDataset, eval_loader, split_rows
from vgg2resnet.data.loaders import make_loader, with_progress
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import write_sidecar
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


def quantize_on_train_sample(
    params: Params, fp32: Path, int8: Path, categories: list[str], transform: Callable
) -> dict:
    """Quantize an fp32 export to int8, calibrated on the seeded train sample; return what it was
    calibrated on (split, method and image paths)."""
    c = params.compress
    rows = split_rows(params, CALIBRATION_SPLIT)
    train = ImageDataset(rows, params.data.raw_dir, categories, transform)
    sample = calibration_sample(params, train)
    log.info(
        "quantizing to int8 (%s calibration on %d %s images) -> %s",
        c.calibration_method,
        len(sample),
        CALIBRATION_SPLIT,
        int8,
    )
    quantize_int8(
        fp32,
        int8,
        _batches(make_loader(Subset(train, sample), params.runtime, c.calibration_batch_size)),
        c.calibration_method,
        c.per_channel,
    )
    return {
        "split": CALIBRATION_SPLIT,
        "method": c.calibration_method,
        "per_channel": c.per_channel,
        "paths": rows["path"].iloc[sample].tolist(),
    }


def _derived_meta(source: dict, variant: str, extra: dict) -> dict:
    """A form's metadata: its source model's (less that file's hash and size), then its own."""
    keep = {k: v for k, v in source.items() if k not in ("sha256", "bytes")}
    return {**keep, "variant": variant, "source_sha256": source["sha256"], **extra}


def export_forms(
    params: Params, model: nn.Module, source: dict, targets: dict[str, Path], categories: list[str], **meta
) -> dict[str, dict]:
    """Write `model` as ONNX fp32 and int8 to `targets` ({variant: path}, fp32 first) with their
    sidecars; `source` is the metadata of the model file it came from, `meta` what the forms add
    to it. Returns each form's val parity with `model`."""
    c = params.compress
    (fp32_name, fp32), (int8_name, int8) = targets.items()
    transform = transform_from_meta(source["preprocessing"])
    log.info("exporting %s to ONNX (opset %d) -> %s", fp32_name, c.opset, fp32)
    export_onnx(model, fp32, source["preprocessing"]["image_size"], c.opset)

    val = eval_loader(params, "val", categories, params.evaluate.batch_size, transform)
    reference = predict_logits(TorchRunner(model, CPU), with_progress(val, "val parity: PyTorch"))
    fp32_parity = parity(reference, predict_logits(OnnxRunner(fp32, CPU), with_progress(val, "val parity: ONNX fp32")))
    if fp32_parity["max_abs_logit"] > c.parity_max_abs_logit or fp32_parity["agreement"] < c.parity_min_agreement:
        fp32.unlink()
        raise UserError(
            f"{fp32}: the ONNX export does not reproduce PyTorch on the val split (max abs logit difference "
            f"{fp32_parity['max_abs_logit']:.3g} vs compress.parity_max_abs_logit {c.parity_max_abs_logit:.3g}, "
            f"top-1 agreement {fp32_parity['agreement']:.2f}% vs compress.parity_min_agreement "
            f"{c.parity_min_agreement}%); try another compress.opset"
        )
    write_sidecar(fp32, _derived_meta(source, fp32_name, {**meta, "opset": c.opset, "parity": fp32_parity}))

    calibration = quantize_on_train_sample(params, fp32, int8, categories, transform)
    int8_parity = parity(reference, predict_logits(OnnxRunner(int8, CPU), with_progress(val, "val parity: ONNX int8")))
    write_sidecar(
        int8,
        _derived_meta(source, int8_name, {**meta, "opset": c.opset, "calibration": calibration, "parity": int8_parity}),
    )
    log.info(
        "val parity vs PyTorch: %s max |dlogit| %.2g, agreement %.2f%%; %s max |dlogit| %.2g, "
        "agreement %.2f%%; sizes %.1f MB, %.1f MB",
        fp32_name,
        fp32_parity["max_abs_logit"],
        fp32_parity["agreement"],
        int8_name,
        int8_parity["max_abs_logit"],
        int8_parity["agreement"],
        fp32.stat().st_size / 1e6,
        int8.stat().st_size / 1e6,
    )
    return {fp32_name: fp32_parity, int8_name: int8_parity}
