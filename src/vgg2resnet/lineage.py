"""Where a model came from: the data version (DVC's hash of the images), the git revision, params."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from vgg2resnet.errors import UserError


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


def recorded_data_version(raw_dir: Path, lock_file: Path = Path("dvc.lock")) -> str | None:
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


def git_revision(repo_root: Path | None = None) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        revision = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{revision}-dirty" if dirty else revision


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
