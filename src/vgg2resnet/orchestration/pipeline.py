"""Reproducing dvc.yaml stages through DVC's Python API, so DVC decides what is stale and
dvc.lock records every run; the flows add scheduling, retries and reporting on top."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import yaml

from vgg2resnet.errors import UserError

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage's command failed; the message says which stage and why, when the stage recorded it."""


def stage_names(root: Path) -> list[str]:
    """Stage names in dvc.yaml's order, which is the DAG's order."""
    return list(yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"])


def reproduce(stage: str, root: Path, force: bool = False, pull: bool = False) -> bool:
    """Reproduce one stage (not its upstream); True if it ran, False if DVC found it up to date.
    With pull, DVC first looks for the stage's result in the remote's run cache."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    # DVC's in-process API resolves some output paths against the working directory.
    with contextlib.chdir(root), Repo(str(root)) as repo:
        try:
            ran = repo.reproduce(stage, single_item=True, force=force, pull=pull)
        except ReproductionError as exc:
            raise StageFailed(f"stage '{stage}' failed: {explain_failure(stage, Path(root))}") from exc
    log.info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return bool(ran)


def explain_failure(stage: str, root: Path) -> str:
    """The reason a stage left behind (validation's result.json), or a pointer to its output."""
    result = root / "reports" / "validation" / "result.json"
    if stage == "validate" and result.is_file():
        problems = json.loads(result.read_text())["summary"]["problems"]
        return "; ".join(p["message"] for p in problems if p["severity"] == "fail") or "see " + str(result)
    return f"see the output of `vgg2resnet {stage}`"


def gate_outcome(root: Path, reports_dir: Path) -> dict:
    path = Path(root) / reports_dir / "gate.json"
    if not path.is_file():
        raise UserError(f"{path}: no gate report")
    return json.loads(path.read_text())
