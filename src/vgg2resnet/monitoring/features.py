"""Image columns for drift monitoring: cheap image statistics and a low-dimensional embedding
of the student's penultimate features (a PCA fitted on the training split, saved with the model).

The service, the reference profile and the monitor all call these, so the columns compared
are computed by the same code.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

IMAGE_STAT_COLUMNS = ["width", "height", "brightness", "contrast", "sharpness", "saturation"]


def image_statistics(image: Image.Image) -> dict[str, float]:
    """Size, mean and spread of luminance, edge energy and mean saturation, each in [0, 255] units."""
    luminance = image.convert("L")
    grey = np.asarray(luminance, dtype=np.float32)
    edges = np.asarray(luminance.filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    saturation = np.asarray(image.convert("HSV"), dtype=np.float32)[..., 1]
    return {
        "width": float(image.width),
        "height": float(image.height),
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(edges.mean()),
        "saturation": float(saturation.mean()),
    }


def penultimate_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled features before the classifier) of a torchvision ResNet in one forward pass."""
    features: list[torch.Tensor] = []
    handle = model.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    try:
        logits = model(images)
    finally:
        handle.remove()
    return logits, features[0]


def fit_projection(features: torch.Tensor, dims: int) -> dict[str, torch.Tensor]:
    """PCA by SVD: the mean and the top `dims` principal axes."""
    mean = features.mean(dim=0)
    _, _, vh = torch.linalg.svd(features - mean, full_matrices=False)
    return {"mean": mean.contiguous(), "components": vh[:dims].contiguous()}


def project(features: torch.Tensor, projection: dict[str, torch.Tensor]) -> torch.Tensor:
    return (features - projection["mean"]) @ projection["components"].T


def embedding_columns(dims: int) -> list[str]:
    return [f"emb_{i}" for i in range(dims)]
