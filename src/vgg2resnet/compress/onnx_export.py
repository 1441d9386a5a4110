"""Export the student to ONNX with a dynamic batch axis and two outputs: the logits and the
pooled penultimate features (which the service projects into the drift embedding)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vgg2resnet import atomic
from vgg2resnet.models.variants import ONNX_INPUT, ONNX_OUTPUTS
from vgg2resnet.monitoring.features import penultimate_features


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
        torch.onnx.export(wrapped, (example,), str(tmp), input_names=[ONNX_INPUT], output_names=ONNX_OUTPUTS,
                          dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)


def parity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How closely a variant's logits follow the reference's on the same images."""
    return {
        "max_abs_logit": float((reference - candidate).abs().max()),
        "agreement": 100.0 * float((reference.argmax(1) == candidate.argmax(1)).float().mean()),
    }
