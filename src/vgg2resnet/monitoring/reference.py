"""The drift reference of a promoted model version: the service's own features and predictions
over the validation split of the data that version was trained on.

It is computed when a version is promoted and stored in that version's model-store folder, so
it is never replaced by a run that promoted nothing, a rollback restores it with its model, and
the monitor compares traffic with the reference of the version that served it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from PIL import Image

from vgg2resnet.config import Params
from vgg2resnet.data.datasets import load_split
from vgg2resnet.errors import UserError
from vgg2resnet.serving.classifier import REFERENCE_FILE, Classifier

log = logging.getLogger(__name__)


def profile(classifier: Classifier, paths: list[Path], batch_size: int, top_k: int) -> pd.DataFrame:
    """One row per image: the drift features, the prediction and its confidence, as the service logs them."""
    rows = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[start:start + batch_size]]
        for result in classifier.predict(images, top_k):
            rows.append({**result["features"], "prediction": result["category"],
                         "confidence": result["confidence"]})
    return pd.DataFrame(rows)


def write_reference(params: Params, model_dir: Path) -> Path:
    """Profile the val split with the model folder's own classifier; write it into that folder."""
    rows = load_split(params.data.prepared_dir, "val")
    table = profile(Classifier(model_dir), [params.data.raw_dir / p for p in rows["path"]],
                    params.evaluate.batch_size, params.serving.top_k)
    target = Path(model_dir) / REFERENCE_FILE
    table.to_parquet(target, index=False)
    log.info("drift reference: %d validation images profiled", len(table))
    return target


def read_reference(model) -> pd.DataFrame:
    """The reference stored with a model-store version (a `bentoml.Model`)."""
    path = Path(model.path) / REFERENCE_FILE
    if not path.is_file():
        raise UserError(f"{model.tag} has no drift reference ({path} is missing): it was promoted before "
                        "references were stored with their model; run the pipeline to promote a new version, "
                        "or monitor another one with --model-tag")
    return pd.read_parquet(path)
