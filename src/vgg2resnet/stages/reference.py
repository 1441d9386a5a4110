"""Stage `reference`: the drift baseline of the model in production, from the validation split,
computed by the service's own feature code (so both sides of every comparison match).

    vgg2resnet reference         # or: dvc repro reference
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from PIL import Image

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.data.datasets import load_split
from vgg2resnet.errors import UserError
from vgg2resnet.monitoring.monitor import reference_path
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import Classifier

log = logging.getLogger(__name__)


def profile(classifier: Classifier, paths: list[Path], batch_size: int, top_k: int) -> pd.DataFrame:
    rows = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[start:start + batch_size]]
        for result in classifier.predict(images, top_k):
            rows.append({**result["features"], "prediction": result["category"],
                         "confidence": result["confidence"]})
    return pd.DataFrame(rows)


def run(params: Params) -> dict:
    promoted = store.current(params.serving.model_name)
    if promoted is None:
        raise UserError(f"no promoted '{params.serving.model_name}' in the BentoML model store; "
                        "the gate must promote a model before a reference can be computed")
    classifier = Classifier(Path(promoted.path))
    rows = load_split(params.data.prepared_dir, "val")
    table = profile(classifier, [params.data.raw_dir / p for p in rows["path"]],
                    params.evaluate.batch_size, params.serving.top_k)
    table.insert(0, "model_tag", str(promoted.tag))
    target = reference_path(params)
    with atomic.atomic_path(target) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("reference profile of %s: %d validation images -> %s", promoted.tag, len(table), target)
    return {"model_tag": str(promoted.tag), "rows": len(table)}
