"""The promoted student, loaded from a model-store folder, with its own preprocessing and the
drift features logged beside every prediction."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import load_model
from vgg2resnet.monitoring.features import embedding_columns, image_statistics, penultimate_features, project

MODEL_FILE = "model.pt"
PROJECTION_FILE = "projection.pt"


class Classifier:
    def __init__(self, model_dir: Path, device: torch.device | None = None) -> None:
        model_dir = Path(model_dir)
        model, self.meta = load_model(model_dir / MODEL_FILE)
        self.categories: list[str] = self.meta["categories"]
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.transform = transform_from_meta(self.meta["preprocessing"])
        self.projection = torch.load(model_dir / PROJECTION_FILE, map_location="cpu", weights_only=True)
        self.embedding_columns = embedding_columns(self.projection["components"].shape[0])

    @torch.no_grad()
    def predict(self, images: list[Image.Image], top_k: int) -> list[dict]:
        """One dict per image: category, confidence, top-k and the drift features."""
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        logits, features = penultimate_features(self.model, batch)
        probabilities = logits.float().softmax(dim=1).cpu()
        embeddings = project(features.float().cpu(), self.projection)
        k = min(top_k, len(self.categories))
        results = []
        for image, probs, embedding in zip(images, probabilities, embeddings):
            values, indices = probs.topk(k)
            results.append({
                "category": self.categories[int(indices[0])],
                "confidence": float(values[0]),
                "top_k": [{"category": self.categories[int(i)], "probability": float(v)}
                          for v, i in zip(values, indices)],
                "features": {**image_statistics(image),
                             **dict(zip(self.embedding_columns, embedding.tolist()))},
            })
        return results
