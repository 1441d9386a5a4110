"""The promoted student as the service runs it, and the columns it logs for drift monitoring.

The model is loaded from a model-store folder in whichever variant was promoted (PyTorch or
ONNX Runtime), with its own preprocessing. Beside every prediction it logs cheap image
statistics and a low-dimensional embedding of the student's penultimate features (a PCA fitted
on the training split, saved with the model). The reference profile computed at promotion and
the monitor use the same functions, so the columns compared are computed by the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.variants import Runner, load_runner

IMAGE_STAT_COLUMNS = ["width", "height", "brightness", "contrast", "sharpness", "saturation"]
# The statistics are taken on the image reduced to at most this side: their cost and memory stay
# bounded whatever the upload's size, and 65,536 pixels estimate an image's means to well
# under one grey level. Edge energy depends on scale, which is why the reference uses the same.
STATISTICS_SIDE = 256


def image_statistics(image: Image.Image) -> dict[str, float]:
    """Size, then mean and spread of luminance, edge energy and mean saturation of the image
    reduced to STATISTICS_SIDE, each in [0, 255] units."""
    width, height = image.size
    scale = STATISTICS_SIDE / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    luminance = image.convert("L")
    grey = np.asarray(luminance, dtype=np.float32)
    edges = np.asarray(luminance.filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    saturation = np.asarray(image.convert("HSV"), dtype=np.float32)[..., 1]
    return {
        "width": float(width),
        "height": float(height),
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(edges.mean()),
        "saturation": float(saturation.mean()),
    }


def fit_projection(features: torch.Tensor, dims: int) -> dict[str, torch.Tensor]:
    """PCA by SVD: the mean and the top `dims` principal axes."""
    mean = features.mean(dim=0)
    _, _, vh = torch.linalg.svd(features - mean, full_matrices=False)
    return {"mean": mean.contiguous(), "components": vh[:dims].contiguous()}


def project(features: torch.Tensor, projection: dict[str, torch.Tensor]) -> torch.Tensor:
    return (features - projection["mean"]) @ projection["components"].T


def embedding_columns(dims: int) -> list[str]:
    return [f"emb_{i}" for i in range(dims)]


def open_model_dir(model_dir: Path, device: torch.device | None = None) -> tuple[Runner, dict[str, Any]]:
    """The runner and metadata of a promoted version's folder."""
    return load_runner(StoreLayout.model_in(Path(model_dir)), device=device)


class Predictor:
    """A promoted version loaded for serving: its runner, its own preprocessing, and the drift
    features logged beside every prediction."""

    def __init__(self, model_dir: Path, device: torch.device | None = None) -> None:
        model_dir = Path(model_dir)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.runner, self.meta = open_model_dir(model_dir, self.device)
        self.categories: list[str] = self.meta["categories"]
        self.transform = transform_from_meta(self.meta["preprocessing"])
        self.projection = torch.load(model_dir / StoreLayout.PROJECTION, map_location="cpu", weights_only=True)
        self.embedding_columns = embedding_columns(self.projection["components"].shape[0])

    def predict(self, images: list[Image.Image], top_k: int) -> list[dict]:
        """One dict per image: category, confidence, top-k and the drift features."""
        logits, features = self.runner(torch.stack([self.transform(image) for image in images]))
        probabilities = logits.softmax(dim=1)
        embeddings = project(features, self.projection)
        k = min(top_k, len(self.categories))
        results = []
        # A stable sort breaks ties (common in int8 outputs) towards the lower index, as the
        # argmax of the offline evaluation does; topk's tie order is unspecified.
        ranked, order = probabilities.sort(dim=1, descending=True, stable=True)
        for image, values, indices, embedding in zip(images, ranked[:, :k], order[:, :k], embeddings):
            results.append(
                {
                    "category": self.categories[int(indices[0])],
                    "confidence": float(values[0]),
                    "top_k": [
                        {"category": self.categories[int(i)], "probability": float(v)} for v, i in zip(values, indices)
                    ],
                    "features": {**image_statistics(image), **dict(zip(self.embedding_columns, embedding.tolist()))},
                }
            )
        return results
