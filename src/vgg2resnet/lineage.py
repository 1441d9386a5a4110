"""Where a model came from: the data version (DVC's hash of the images), the git revision, params."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from vgg2resnet.artifacts import DVC_LOCK, Artifacts
from vgg2resnet.config import Params, UserError


def data_version(raw_dir: Path, repo_root: Path | None = None) -> str:
    """DVC's md5 of raw_dir as it is in the workspace now (what `dvc commit` would record)."""
    from dvc.repo import Repo

    target = Path(raw_dir).resolve()
    with Repo(str(repo_root) if repo_root else None) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if Path(out.fs_path).resolve() == target:
                    return out.get_hash().value
    raise UserError(f"{raw_dir}: not tracked by DVC; it must be an output in dvc.yaml or a .dvc file")


def recorded_data_version(raw_dir: Path, lock_file: Path = DVC_LOCK) -> str | None:
    """The data version dvc.lock records for raw_dir (what the running pipeline was given), if any."""
    import yaml

    if not lock_file.is_file():
        return None
    target = Path(raw_dir).as_posix().rstrip("/")
    for stage in (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path", "").rstrip("/") == target:
                return out.get("md5")
    return None


def pipeline_outputs(root: Path) -> list[str]:
    """Every output dvc.yaml declares (outs, metrics, plots), its ${...} filled from
    params.yaml: what `dvc repro` itself rewrites, some of it kept in git (cache: false)."""
    import yaml

    spec, settings = Path(root) / "dvc.yaml", Path(root) / "params.yaml"
    if not spec.is_file():
        return []
    values = yaml.safe_load(settings.read_text()) if settings.is_file() else {}

    def filled(match: re.Match) -> str:
        node = values
        for key in match.group(1).split("."):
            if not isinstance(node, dict) or key not in node:  # a setting left to its default
                return match.group(0)
            node = node[key]
        return str(node)

    paths = []
    for stage in (yaml.safe_load(spec.read_text()) or {}).get("stages", {}).values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                paths.append(re.sub(r"\$\{([^}]+)\}", filled, next(iter(entry)) if isinstance(entry, dict) else entry))
    return paths


def git_revision(repo_root: Path | None = None) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ from it, other than what
    `dvc repro` rewrites (dvc.lock and the stages' outputs kept in git), so that an ordinary run
    of a clean clone records a clean revision; 'unknown' outside git."""
    root = Path(repo_root or ".")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        edited = git("diff", "--name-only", "--relative", "HEAD").splitlines()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    rewritten = [str(DVC_LOCK), *(path.rstrip("/") for path in pipeline_outputs(root))]
    dirty = [path for path in edited if not any(path == out or path.startswith(f"{out}/") for out in rewritten)]
    return f"{revision}-dirty" if dirty else revision


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The settings that make a model and the gate's verdict on it: what a params_hash covers.
LINEAGE_SECTIONS = ("data", "augment", "teacher", "distill", "compress", "prune", "evaluate", "gate")


def params_hash(params: Params) -> str:
    """A short hash of the settings in LINEAGE_SECTIONS, as loaded (not of a file that may have
    changed since): the same hash means the same recipe, whatever serving or monitoring say."""
    text = json.dumps(
        {name: getattr(params, name).model_dump(mode="json") for name in LINEAGE_SECTIONS}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_hash(params: Params) -> str:
    """The sha256 of the manifest: which images, splits and facts a model was made from."""
    return file_sha256(Artifacts(params).manifest)
