"""The promoted student, loaded from a model-store folder in whichever variant was promoted
(PyTorch or ONNX Runtime), with its own preprocessing and the drift features logged beside
every prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.variants import Runner, load_runner
from vgg2resnet.monitoring.features import embedding_columns, image_statistics, project

MODEL_FILE = "model.pt"      # a PyTorch checkpoint
ONNX_FILE = "model.onnx"     # or an ONNX export (fp32 or int8), with model.json beside it
PROJECTION_FILE = "projection.pt"
REFERENCE_FILE = "reference.parquet"  # the drift baseline of this version (monitoring.reference)


def open_model_dir(model_dir: Path, device: torch.device | None = None) -> tuple[Runner, dict[str, Any]]:
    """The runner and metadata of a promoted version's folder."""
    model_dir = Path(model_dir)
    onnx = model_dir / ONNX_FILE
    return load_runner(onnx if onnx.is_file() else model_dir / MODEL_FILE, device=device)


class Classifier:
    def __init__(self, model_dir: Path, device: torch.device | None = None) -> None:
        model_dir = Path(model_dir)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.runner, self.meta = open_model_dir(model_dir, self.device)
        self.categories: list[str] = self.meta["categories"]
        self.transform = transform_from_meta(self.meta["preprocessing"])
        self.projection = torch.load(model_dir / PROJECTION_FILE, map_location="cpu", weights_only=True)
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
            results.append({
                "category": self.categories[int(indices[0])],
                "confidence": float(values[0]),
                "top_k": [{"category": self.categories[int(i)], "probability": float(v)}
                          for v, i in zip(values, indices)],
                "features": {**image_statistics(image),
                             **dict(zip(self.embedding_columns, embedding.tolist()))},
            })
        return results
