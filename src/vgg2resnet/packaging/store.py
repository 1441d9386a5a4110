"""Promotion in the BentoML model store.

Every version saved under the model name is a promoted one (candidates that fail the gate
are never saved), labelled `stage: promoted`; the newest is the one in production. Labels
are immutable and nothing is overwritten: a rollback saves the older version's files again
as a new version, so the history keeps every step.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from vgg2resnet.errors import UserError
from vgg2resnet.serving.classifier import MODEL_FILE, ONNX_FILE, PROJECTION_FILE

log = logging.getLogger(__name__)
__all__ = ["MODEL_FILE", "ONNX_FILE", "PROJECTION_FILE", "current", "promoted_versions", "rollback", "save_version"]
PROMOTED = {"stage": "promoted"}


def promoted_versions(name: str) -> list:
    """Promoted versions of `name`, newest first."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    promoted = [m for m in models if m.info.labels.get("stage") == PROMOTED["stage"]]
    return sorted(promoted, key=lambda m: m.info.creation_time, reverse=True)


def current(name: str):
    """The model in production: the newest promoted version, or None."""
    versions = promoted_versions(name)
    return versions[0] if versions else None


def save_version(name: str, files: dict[str, Path], metadata: dict[str, Any], promoted: bool = True) -> str:
    """Save files as a new version (promoted unless told otherwise); return its tag."""
    import bentoml

    with bentoml.models.create(name, labels=dict(PROMOTED) if promoted else {}, metadata=metadata) as ref:
        for target, source in files.items():
            shutil.copyfile(source, ref.path_of(target))
    log.info("saved %s to the BentoML model store", ref.tag)
    return str(ref.tag)


def rollback(name: str, tag: str | None = None) -> str:
    """Make an earlier promoted version current again (the previous one by default)."""
    import bentoml

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
        target = bentoml.models.get(tag)
        if target.info.labels.get("stage") != PROMOTED["stage"]:
            raise UserError(f"{tag} was never promoted; choose one of {[str(m.tag) for m in versions]}")
    files = {p.name: p for p in Path(target.path).iterdir() if p.is_file() and not p.name.startswith("model.yaml")}
    metadata = {**target.info.metadata, "restored_from": str(target.tag)}
    return save_version(name, files, metadata)
