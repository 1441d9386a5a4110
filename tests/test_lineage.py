"""The git revision a model records: '-dirty' only when the user's tracked files differ from
the commit, not when `dvc repro` rewrote its own records, checked in a real git repository."""

import shutil
import subprocess
from pathlib import Path

from vgg2resnet.lineage import git_revision, pipeline_outputs

from .conftest import ROOT


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_what_dvc_repro_rewrites_leaves_the_revision_clean_and_an_edit_of_the_users_does_not(tmp_path: Path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    rewritten = [
        tmp_path / "dvc.lock",
        tmp_path / "reports/gate.md",
        tmp_path / "data/sources/images.json",
        tmp_path / "metrics/evaluate/metrics.json",
    ]
    for path in rewritten:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("as committed\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "project")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert {"reports/gate.md", "data/sources/images.json", "metrics/evaluate/metrics.json"} <= set(
        pipeline_outputs(tmp_path)
    )

    for path in rewritten:  # what a `dvc repro` of a clean clone writes
        path.write_text("rewritten by the pipeline\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_revision(tmp_path) == head

    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("seed: 0", "seed: 1", 1))
    assert git_revision(tmp_path) == f"{head}-dirty"
