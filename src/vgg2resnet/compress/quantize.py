"""Post-training static int8 quantization with ONNX Runtime's tools (QDQ format: int8 weights
per channel, uint8 activations whose ranges a calibration pass over sample images sets)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vgg2resnet import atomic
from vgg2resnet.models.variants import ONNX_INPUT

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _reader(batches: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: batch}

    return Batches()


def quantize_int8(fp32: Path, target: Path, batches: Iterable[np.ndarray], method: str = "minmax",
                  per_channel: bool = True) -> None:
    """Quantize the fp32 ONNX file into target (atomically), calibrated on `batches`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and graph fusion first, as ONNX Runtime recommends before quantizing.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with atomic.atomic_path(Path(target)) as tmp:
            quantize_static(str(prepared), str(tmp), _reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, METHODS[method]))
