"""Model files: weights plus what is needed to use them (categories, arch, input size, normalisation).

`<name>.pt` holds {"state_dict", "meta"} and loads with weights_only=True; `<name>.json` beside it
repeats the meta and adds the file's sha256, for people and for lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vgg2resnet import atomic
from vgg2resnet.artifacts import sidecar
from vgg2resnet.config import Params, TeacherParams, UserError
from vgg2resnet.data.categories import read_categories
from vgg2resnet.data.transforms import preprocessing_meta
from vgg2resnet.lineage import file_sha256, git_revision, manifest_hash, recorded_data_version
from vgg2resnet.models.builders import build_model, load_state_dict

log = logging.getLogger(__name__)


def model_meta(params: Params, arch: str, categories: list[str], image_size: int, init: str, **extra) -> dict:
    """What a trained model file records: how to use it and where it came from."""
    return {
        "arch": arch,
        "categories": categories,
        "preprocessing": preprocessing_meta(image_size, params.augment),
        "init": init,
        "data_version": recorded_data_version(params.data.raw_dir),
        "manifest_sha256": manifest_hash(params),
        "git_revision": git_revision(),
        "torch": str(torch.__version__),
        **extra,
    }


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights alone: the same training gives the same value whatever the metadata
    (git revision, paths) saved beside them, which the file's sha256 does not."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def save_model(path: Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Write weights and meta atomically; return the meta with the file's sha256 and size."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_path(Path(path)) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return write_sidecar(path, {**meta, "weights_sha256": weights_sha256(state)})


def write_sidecar(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write `<name>.json` beside a model file: its meta plus the file's sha256 and size."""
    full = {**meta, "sha256": file_sha256(path), "bytes": Path(path).stat().st_size}
    atomic.write_json(sidecar(path), full)
    return full


def read_meta(path: Path) -> dict[str, Any]:
    side = sidecar(path)
    if not side.is_file():
        raise UserError(f"{side}: model metadata not found; re-run the stage that writes {path}")
    return json.loads(side.read_text())


def load_model(path: Path, categories: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model in eval mode; refuse it when its categories differ from `categories`."""
    if not Path(path).is_file():
        raise UserError(f"{path}: model file not found; run the stage that produces it")
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    meta = payload["meta"]
    check_categories(meta["categories"], categories, str(path))
    model = build_model(meta["arch"], len(meta["categories"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def check_categories(model_categories: list[str], data_categories: list[str] | None, where: str) -> None:
    """Index i of a model's output is category i: any difference is an error, never a remap."""
    if data_categories is None or list(model_categories) == list(data_categories):
        return
    missing = sorted(set(data_categories) - set(model_categories))
    extra = sorted(set(model_categories) - set(data_categories))
    detail = f"missing {missing}, extra {extra}" if missing or extra else "same names in a different order"
    raise UserError(
        f"{where}: the model's categories do not match the data's ({detail}); "
        "retrain, or make data/prepared/categories.json list the model's categories in its order"
    )


def import_user_teacher(path: Path, arch: str, categories: list[str]) -> nn.Module:
    """A user's fine-tuned VGG-16 state_dict, checked against its category list."""
    from vgg2resnet.models.builders import build_teacher

    model = build_teacher(arch, len(categories))
    state = load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        head = state.get("classifier.6.weight")
        outputs = None if head is None else head.shape[0]
        raise UserError(
            f"{path}: does not load into {arch} with {len(categories)} categories "
            f"(its head has {outputs} outputs); check teacher.arch and teacher.categories_file"
        ) from exc
    return model.eval()


def import_teacher(tparams: TeacherParams, categories: list[str]) -> nn.Module:
    """The user's teacher, checked against the data's categories."""
    if tparams.categories_file is None:
        raise UserError(
            "teacher.checkpoint is set but teacher.categories_file is not: give the JSON list "
            "of the teacher's categories in the order of its outputs"
        )
    teacher_categories = read_categories(tparams.categories_file)
    # prepare orders the data's categories as the teacher's file does, so this only fails when the
    # names differ (it names the missing and extra ones) or categories.json is from another run.
    check_categories(teacher_categories, categories, str(tparams.checkpoint))
    log.info("importing the teacher from %s", tparams.checkpoint)
    return import_user_teacher(tparams.checkpoint, tparams.arch, teacher_categories)
