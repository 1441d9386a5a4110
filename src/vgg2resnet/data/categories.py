"""Which categories the data must have, and in which order (index i of a model's output is category i)."""

from __future__ import annotations

import json
from pathlib import Path

from vgg2resnet.artifacts import Artifacts, require
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.digits import DEMO_CATEGORIES


def read_categories(path: Path) -> list[str]:
    """Read an ordered category list (a JSON array of strings)."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: categories file not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); expected an array of category names") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{path}: expected a JSON array of non-empty category names")
    if len(set(value)) != len(value):
        raise UserError(f"{path}: category names must be unique")
    return value


def expected_categories(params: Params) -> tuple[list[str] | None, str]:
    """The categories the data must match, and where that list comes from.

    The teacher's own list wins (the student must learn exactly what the teacher knows),
    then `data.categories`, then the demo's list; None means "take them from the data".
    """
    if params.teacher.categories_file is not None:
        return read_categories(params.teacher.categories_file), str(params.teacher.categories_file)
    if params.data.categories is not None:
        return list(params.data.categories), "params.yaml data.categories"
    if params.data.source == "demo":
        return list(DEMO_CATEGORIES), "the demo data set"
    return None, "the data itself"


def order_categories(found: list[str], expected: list[str] | None) -> list[str]:
    """Expected order first; anything unexpected after it, sorted (validation will flag it)."""
    if expected is None:
        return sorted(found)
    return [c for c in expected if c in found] + sorted(set(found) - set(expected))


def data_categories(params: Params) -> list[str]:
    """The data's categories in model-output order, as `prepare` wrote them."""
    return read_categories(require(Artifacts(params).categories, "prepare"))
