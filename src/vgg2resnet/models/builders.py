"""Builders for the torchvision VGG-16 teacher and ResNet-50 student with an N-category head.

Pretrained weights come only from local files (torchvision ImageNet .pth files the user
downloaded): nothing here reaches the network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from vgg2resnet.config import UserError

log = logging.getLogger(__name__)

TEACHER_ARCHS = ("vgg16", "vgg16_bn")
STUDENT_ARCH = "resnet50"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load tensors only: a pickled checkpoint from elsewhere could run code on a full load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found; download it first or set the params key to null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-tensor pickles
        raise UserError(
            f"{path}: refused to load: it holds more than tensors and plain containers "
            f"({type(exc).__name__}); re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state_dict (a mapping of tensor names to tensors)")
    return state


def _load_backbone(model: nn.Module, path: Path, head: str) -> None:
    """Load ImageNet weights into everything but the head, which keeps its new N-category shape."""
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise UserError(
            f"{path}: does not match the {type(model).__name__} architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); is it the right model's weights?"
        )
    log.info("loaded pretrained backbone weights from %s", path)


def build_teacher(arch: str, num_classes: int, pretrained: Path | None = None) -> nn.Module:
    if arch == "vgg16":
        model = models.vgg16(weights=None, num_classes=num_classes)
    elif arch == "vgg16_bn":
        model = models.vgg16_bn(weights=None, num_classes=num_classes)
    else:
        raise ValueError(f"unknown teacher arch {arch!r}; choose one of {TEACHER_ARCHS}")
    if pretrained is not None:
        _load_backbone(model, pretrained, "classifier.6.")
    return model


def build_student(num_classes: int, pretrained: Path | None = None) -> nn.Module:
    model = models.resnet50(weights=None, num_classes=num_classes)
    if pretrained is not None:
        _load_backbone(model, pretrained, "fc.")
    return model


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained model of a saved architecture, ready for load_state_dict."""
    if arch == STUDENT_ARCH:
        return build_student(num_classes)
    return build_teacher(arch, num_classes)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The new N-category layer: trained alone while the backbone is frozen."""
    head = model.fc if hasattr(model, "fc") else model.classifier[6]
    return list(head.parameters())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int) -> int:
    """Floating-point operations of one forward pass on one image, as torch's FlopCounterMode
    counts them (a multiply-add is 2; convolutions and matrix products only)."""
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(model.parameters())
    image = torch.randn(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    counter = FlopCounterMode(display=False)
    training = model.training
    with torch.no_grad(), counter:
        model.eval()(image)
    model.train(training)
    return int(counter.get_total_flops())
