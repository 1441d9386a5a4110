"""The student as ONNX graphs: an fp32 export with a dynamic batch axis and two outputs (the
logits and the pooled penultimate features, which the service projects into the drift
embedding), and its post-training static int8 quantization with ONNX Runtime's tools (QDQ
format: int8 weights per channel, uint8 activations whose ranges a calibration pass over sample
images sets)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vgg2resnet import atomic
from vgg2resnet.models.variants import ONNX_INPUT, ONNX_OUTPUTS, penultimate_features

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _WithFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return penultimate_features(self.model, images)


def export_onnx(model: nn.Module, path: Path, image_size: int, opset: int) -> None:
    """Write a self-contained .onnx file (weights inside, no external data) atomically."""
    # The wrapper must be in eval mode too: the exporter traces in the mode of the module it gets.
    wrapped = _WithFeatures(model.float().cpu().eval()).eval()
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic.atomic_path(Path(path)) as tmp:
        torch.onnx.export(
            wrapped,
            (example,),
            str(tmp),
            input_names=[ONNX_INPUT],
            output_names=ONNX_OUTPUTS,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def parity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How closely a variant's logits follow the reference's on the same images."""
    return {
        "max_abs_logit": float((reference - candidate).abs().max()),
        "agreement": 100.0 * float((reference.argmax(1) == candidate.argmax(1)).float().mean()),
    }


def _reader(batches: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: batch}

    return Batches()


def quantize_int8(
    fp32: Path, target: Path, batches: Iterable[np.ndarray], method: str = "minmax", per_channel: bool = True
) -> None:
    """Quantize the fp32 ONNX file into target (atomically), calibrated on `batches`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and graph fusion first, as ONNX Runtime recommends before quantizing.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with atomic.atomic_path(Path(target)) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                _reader(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            )
