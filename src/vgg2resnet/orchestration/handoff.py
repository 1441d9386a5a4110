"""Making a git revision that a GPU worker can reproduce a stage from.

The worker sees only what the git remote and the DVC remote hold, so before dispatch the
upstream stages' cached outputs go to the DVC remote, and dvc.lock with their uncached ones
(metrics) is committed (and pushed, when the repository has a git remote).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from vgg2resnet.errors import UserError
from vgg2resnet.lineage import git_revision
from vgg2resnet.orchestration.pipeline import StageFailed, stage_names
from vgg2resnet.orchestration.scm import git, is_ignored


def hand_off(stage: str, root: Path) -> str:
    """The revision (a commit) holding everything `stage` needs; return its hash."""
    from dvc.repo import Repo

    names = stage_names(root)
    upstream = names[:names.index(stage)]
    with contextlib.chdir(root), Repo(str(root)) as repo:
        records = ["dvc.lock"] + [out.def_path for s in repo.index.stages if s.name in upstream
                                  for out in s.outs if not out.use_cache]
        changed = [line[3:] for line in git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
                   if not any(line[3:] == r or line[3:].startswith(f"{r}/") for r in records)]
        if changed:
            raise StageFailed(f"stage '{stage}' runs on a GPU worker, which checks out a git revision, but "
                              f"{', '.join(changed)} have uncommitted changes; commit them (or unset "
                              "orchestration.gpu_work_pool to run it here)")
        if upstream:
            repo.push(targets=upstream)
    for record in records:
        if (root / record).exists() and not is_ignored(root, record):
            git(root, "add", record)
    if git(root, "diff", "--cached", "--name-only"):
        git(root, "commit", "--quiet", "-m",
            f"dvc.lock and metrics of {', '.join(upstream)} before '{stage}' on the GPU pool")
        if git(root, "remote"):
            try:
                git(root, "push", "--quiet")
            except UserError as exc:
                raise StageFailed(f"stage '{stage}' runs on a GPU worker, which fetches the revision from "
                                  f"the git remote, but {exc}") from None
    return git_revision(root)
