"""Whether a model-store version's folder holds what it was saved with.

BentoML copies a new version into the store file by file, so a crash during the copy leaves a
folder that holds part of it: without `model.yaml` BentoML cannot load it at all, and with it
a model file may still be missing or cut short. Every version records the sha256 of each of
its files in its metadata (`files`), and a version whose folder does not match is never
served, never taken for the one in production and never restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.lineage import file_sha256

FILES = "files"  # metadata key: {file name: sha256} of the files a version was saved with
BENTOML_FILES = frozenset({"model.yaml"})  # what BentoML writes beside them


def digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file in a version's folder (BentoML's own excepted)."""
    return {
        path.name: file_sha256(path)
        for path in sorted(Path(folder).iterdir())
        if path.is_file() and path.name not in BENTOML_FILES
    }


def damage(folder: Path, metadata: dict[str, Any]) -> str | None:
    """What is wrong with a version's folder, or None when it holds every file it was saved
    with. A version saved before the digests were recorded is checked by its model file's sha256."""
    folder = Path(folder)
    recorded = metadata.get(FILES) or {StoreLayout.model_in(folder).name: metadata.get("model_sha256")}
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match the sha256 recorded when it was saved"
    return None
