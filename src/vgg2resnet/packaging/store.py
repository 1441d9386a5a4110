"""Promotion in the BentoML model store: the only code that writes to it.

Every version saved under the model name is a promoted one (candidates that fail the gate
are never saved), labelled `stage: promoted`; the newest is the one in production. Labels
are immutable and nothing is overwritten: a rollback saves the older version's files again
as a new version, so the history keeps every step.

A promoted version's folder (`StoreLayout`) holds the model file and its metadata, the
projection of its drift embedding (a PCA of its penultimate features over a sample of the train
split), and its drift reference: the service's own features and predictions over a sample of the
val split of the data it was trained on. The reference is computed when the version is promoted
and stored with it, so a run that promotes nothing never replaces it, a rollback restores it
with its model, and the monitor compares traffic with the reference of the version that served it.

A version's folder left incomplete by a crash while BentoML copied it into the store
(vgg2resnet.integrity) is skipped and reported by everything here: the newest
complete version stays the one in production.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from vgg2resnet.artifacts import Artifacts, StoreLayout, sidecar
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.datasets import eval_loader, split_rows
from vgg2resnet.data.images import decode
from vgg2resnet.data.loaders import make_loader, with_progress
from vgg2resnet.data.shards import StoredImages
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.integrity import BENTOML_FILES, FILES, damage, digests
from vgg2resnet.models.variants import load_runner
from vgg2resnet.serving.classifier import Predictor, fit_projection

log = logging.getLogger(__name__)
PROMOTED = {"stage": "promoted"}


def inventory(name: str) -> tuple[list, list[str]]:
    """(the complete promoted versions of `name`, newest first; a line for each version folder
    that is incomplete or damaged, naming it). BentoML's own listing fails as a whole on a
    folder without its model.yaml, so the folders are read one by one."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    folder = Path(BentoMLContainer.model_store_dir.get()) / name
    whole, broken = [], []
    for version in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not version.is_dir():  # BentoML's `latest` pointer
            continue
        try:
            model = bentoml.models.get(f"{name}:{version.name}")
        except Exception as exc:  # noqa: BLE001 - BentoMLException and its kinds: no or no readable model.yaml
            broken.append(f"{version}: incomplete ({exc})")
            continue
        problem = damage(version, model.info.metadata)
        if problem is not None:
            broken.append(f"{version}: incomplete ({problem})")
        elif model.info.labels.get("stage") == PROMOTED["stage"]:
            whole.append(model)
    return sorted(whole, key=lambda m: m.info.creation_time, reverse=True), broken


def promoted_versions(name: str) -> list:
    """The complete promoted versions of `name`, newest first; incomplete ones are logged."""
    whole, broken = inventory(name)
    for line in broken:
        log.warning(
            "skipped %s; a crash while it was saved can leave this. Remove the folder once no "
            "process is saving a model",
            line,
        )
    return whole


def current(name: str):
    """The model in production: the newest promoted version, or None."""
    versions = promoted_versions(name)
    return versions[0] if versions else None


@contextlib.contextmanager
def new_version(name: str, metadata: dict[str, Any], promoted: bool = True) -> Iterator[Any]:
    """A new version (promoted unless told otherwise) whose files are written into `ref.path`:
    saved on a clean exit, discarded if the block raises."""
    import bentoml

    with bentoml.models.create(name, labels=dict(PROMOTED) if promoted else {}, metadata=metadata) as ref:
        yield ref
        ref.info.metadata[FILES] = digests(Path(ref.path))  # saved in model.yaml when the block ends
    log.info("saved %s to the BentoML model store", ref.tag)


def save_version(name: str, files: dict[str, Path], metadata: dict[str, Any], promoted: bool = True) -> str:
    """Save files as a new version (promoted unless told otherwise); return its tag."""
    with new_version(name, metadata, promoted) as ref:
        for target, source in files.items():
            shutil.copyfile(source, ref.path_of(target))
    return str(ref.tag)


def rollback(name: str, tag: str | None = None) -> str:
    """Make an earlier promoted version current again (the previous one by default)."""
    versions = promoted_versions(name)
    if not versions:
        raise UserError(f"no promoted versions of '{name}' in the BentoML model store; nothing to roll back")
    if tag is None:
        now = versions[0].info.metadata.get("model_sha256")
        earlier = [m for m in versions[1:] if m.info.metadata.get("model_sha256") != now]
        if not earlier:
            raise UserError(f"'{name}' has no earlier promoted model than {versions[0].tag}")
        target = earlier[0]
    else:
        target = next((m for m in versions if str(m.tag) == tag), None)
        if target is None:
            raise UserError(
                f"{tag} is not a complete promoted version of '{name}' (never promoted, incomplete or "
                f"not in the store); choose one of {[str(m.tag) for m in versions]}"
            )
    files = {p.name: p for p in Path(target.path).iterdir() if p.is_file() and p.name not in BENTOML_FILES}
    metadata = {k: v for k, v in target.info.metadata.items() if k != FILES} | {"restored_from": str(target.tag)}
    return save_version(name, files, metadata)


def is_promoted(version, weights_sha256: str, variant: str) -> bool:
    """Whether a store version holds these weights in this form (what makes promotion idempotent)."""
    metadata = version.info.metadata
    return metadata.get("weights_sha256") == weights_sha256 and metadata.get("variant", "pytorch_fp32") == variant


def promote(params: Params, artifact: Path, metadata: dict[str, Any]) -> tuple[str, bool]:
    """Save a models/ artifact, with its drift projection and reference, as the new promoted
    version; (its tag, True) or, when the current version already holds the same weights in the
    same form, (that tag, False)."""
    name = params.serving.model_name
    promoted = current(name)
    if promoted is not None and is_promoted(promoted, metadata["weights_sha256"], metadata["variant"]):
        log.info("%s is already the promoted model %s", metadata["variant"], promoted.tag)
        return str(promoted.tag), False
    # Written straight into the new version's folder: the model file is copied once, and the
    # reference is profiled by the very classifier the service will load from there.
    with new_version(name, metadata) as ref:
        folder = Path(ref.path)
        shutil.copyfile(artifact, folder / StoreLayout.model_file(artifact))
        shutil.copyfile(sidecar(artifact), folder / StoreLayout.META)
        torch.save(_fit_projection(params, artifact, metadata["categories"]), folder / StoreLayout.PROJECTION)
        _write_reference(params, folder)
    return str(ref.tag), True


def _fit_projection(params: Params, artifact: Path, categories: list[str]) -> dict[str, torch.Tensor]:
    """The drift embedding: PCA of the variant's penultimate features over a stratified sample
    of `monitoring.projection_images` training images (memory and time bounded whatever the
    split's size: the whole of 10^6 images would be 8 GB of features for 8 kept dimensions)."""
    runner, meta = load_runner(artifact, categories)
    loader = eval_loader(
        params,
        "train",
        categories,
        params.evaluate.batch_size,
        transform_from_meta(meta["preprocessing"]),
        limit=params.monitoring.projection_images,
    )
    features = torch.cat([runner(images)[1] for images, *_ in with_progress(loader, "drift projection")])
    return fit_projection(features, params.serving.embedding_dims)


class _Decoded(Dataset):
    """Images decoded as the service decodes an upload, in the loader's workers."""

    def __init__(self, images: StoredImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Image.Image:
        return decode(self.images.read(i))


def _as_batch(images: list[Image.Image]) -> tuple[list[Image.Image]]:
    return (images,)


def profile(predictor: Predictor, images: StoredImages, params: Params) -> pd.DataFrame:
    """One row per image: the drift features, the prediction and its confidence, as the service logs them."""
    loader = make_loader(_Decoded(images), params.runtime, params.evaluate.batch_size, collate=_as_batch)
    rows = []
    for (images,) in with_progress(loader, "drift reference"):
        for result in predictor.predict(images, params.serving.top_k):
            rows.append({**result["features"], "prediction": result["category"], "confidence": result["confidence"]})
    return pd.DataFrame(rows)


def _write_reference(params: Params, folder: Path) -> None:
    """Profile a stratified sample of `monitoring.reference_images` val images with the folder's
    own classifier; write it into that folder."""
    rows = split_rows(params, "val", params.monitoring.reference_images)
    table = profile(Predictor(folder), StoredImages(Artifacts(params).raw_dir, rows), params)
    table.to_parquet(folder / StoreLayout.REFERENCE, index=False)
    log.info("drift reference: %d validation images profiled", len(table))


def read_reference(version) -> pd.DataFrame:
    """The drift reference stored with a model-store version (a `bentoml.Model`)."""
    path = Path(version.path) / StoreLayout.REFERENCE
    if not path.is_file():
        raise UserError(
            f"{version.tag} has no drift reference ({path} is missing): it was promoted before "
            "references were stored with their model; run the pipeline to promote a new version, "
            "or monitor another one with --model-tag"
        )
    return pd.read_parquet(path)


def version_metadata(gate: dict, student: dict) -> dict:
    """What the store records with a promoted version: the model, the gate's verdict, the lineage."""
    lineage = gate["lineage"]
    return {
        "variant": gate["variant"],
        "model_sha256": student["sha256"],
        "weights_sha256": student["weights_sha256"],
        "arch": student["arch"],
        "categories": student["categories"],
        "preprocessing": student["preprocessing"],
        "init": student["init"],
        "data_version": lineage["data_version"] or "",
        "git_revision": lineage["git_revision"],
        "params_hash": lineage["params_hash"],
        "teacher_sha256": student["teacher_sha256"],
        "gate": {c["name"]: {"value": c["value"], "passed": c["passed"]} for c in gate["checks"]},
        "summary": gate["summary"],
    }
