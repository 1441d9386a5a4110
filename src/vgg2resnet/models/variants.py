"""The student in each of its forms behind one call: a preprocessed batch in, (logits, pooled
penultimate features) out.

PyTorch runs the checkpoint; ONNX Runtime runs the exported graphs, whose second output is the
features, so evaluation, the service and the drift embedding treat every variant alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from vgg2resnet.config import UserError
from vgg2resnet.models.checkpoint import check_categories, load_model, read_meta

ONNX_INPUT = "images"
ONNX_OUTPUTS = ["logits", "features"]


class Runner(Protocol):
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def penultimate_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled features before the classifier) of a torchvision ResNet in one forward pass."""
    features: list[torch.Tensor] = []
    handle = model.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return logits, features[0]


class TorchRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.eval().to(device), device

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = penultimate_features(self.model, batch.to(self.device))
        return logits.float().cpu(), features.float().cpu()


class OnnxRunner:
    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.session.run(ONNX_OUTPUTS, {ONNX_INPUT: batch.cpu().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features)


def load_runner(
    path: Path, categories: list[str] | None = None, device: torch.device | None = None
) -> tuple[Runner, dict[str, Any]]:
    """A runner for a .pt checkpoint or an .onnx export, and the model's metadata."""
    device = device or torch.device("cpu")
    if Path(path).suffix == ".onnx":
        if not Path(path).is_file():
            raise UserError(f"{path}: model file not found; run `vgg2resnet compress` (or `dvc repro compress`)")
        meta = read_meta(path)
        check_categories(meta["categories"], categories, str(path))
        return OnnxRunner(path, device), meta
    model, meta = load_model(path, categories)
    return TorchRunner(model, device), meta


def predict_logits(runner: Runner, loader: DataLoader) -> torch.Tensor:
    return torch.cat([runner(images)[0] for images, *_ in loader])
