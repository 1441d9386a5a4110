"""Reproducing dvc.yaml stages through DVC's Python API, so DVC decides what is stale and
dvc.lock records every run; the flows add scheduling, retries and reporting on top.

A stage bound for a GPU worker is first handed off: the worker sees only what the git remote
and the DVC remote hold, so the upstream stages' cached outputs go to the DVC remote, and
dvc.lock with their uncached ones (metrics) is committed (and pushed, when the repository has
a git remote).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from pathlib import Path

import yaml

from vgg2resnet.artifacts import DVC_LOCK, Artifacts, read_json
from vgg2resnet.config import DEFAULT_PARAMS, Params, UserError, load_params
from vgg2resnet.lineage import git_revision, recorded_data_version
from vgg2resnet.locking import exclusive

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage's command failed; the message says which stage and why, when the stage recorded it."""


def data_version_of(root: Path, params: Params) -> str | None:
    """The data version (DVC's md5 of data.raw_dir) that the project's dvc.lock records now."""
    return recorded_data_version(Artifacts(params).raw_dir, Path(root) / DVC_LOCK)


def stage_names(root: Path) -> list[str]:
    """Stage names in dvc.yaml's order, which is the DAG's order."""
    return list(yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"])


def reproduce(stage: str, root: Path, pull: bool = False) -> bool:
    """Reproduce one stage (not its upstream); True if it ran, False if DVC found it up to date.
    With pull, DVC first looks for the stage's result in the remote's run cache."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    # DVC's in-process API resolves some output paths against the working directory.
    with contextlib.chdir(root), Repo(str(root)) as repo:
        try:
            ran = repo.reproduce(stage, single_item=True, pull=pull)
        except ReproductionError as exc:
            raise StageFailed(f"stage '{stage}' failed: {explain_failure(stage, Path(root))}") from exc
    log.info("stage %s: %s", stage, "ran" if ran else "up to date, skipped")
    return bool(ran)


def is_stale(stage: str, root: Path) -> bool:
    """True when DVC would run the stage: a dependency, parameter or output changed or is missing."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def explain_failure(stage: str, root: Path) -> str:
    """The reason a stage left behind (validation's result.json), or a pointer to its output."""
    result = root / Artifacts(load_params(root / DEFAULT_PARAMS)).validation_result
    if stage == "validate" and result.is_file():
        problems = json.loads(result.read_text())["summary"]["problems"]
        return "; ".join(p["message"] for p in problems if p["severity"] == "fail") or "see " + str(result)
    return f"see the output of `vgg2resnet {stage}`"


def data_change(before: str | None, after: str | None, ran: dict[str, bool]) -> str:
    """What a run of the pipeline did with the data: a new version, or none (and so whether the
    run could have changed the served model). `before` and `after` are the data versions
    dvc.lock recorded around the run; `ran` says which stages ran, in the DAG's order."""
    names = list(ran)
    later = names[names.index("prepare") + 1 :] if "prepare" in names else []
    retrained = [stage for stage in later if ran[stage]]
    if "prepare" not in ran:
        return f"The run stopped before `prepare`; the data version is still {after or 'unrecorded'}."
    if before != after:
        was = f" (was {before})" if before else ""
        return f"New data version {after}{was}; stages run on it: {', '.join(retrained) or 'none yet'}."
    if not retrained:
        return (
            f"No new images since data version {after}: retraining would reproduce the served model, so "
            "nothing was retrained. Add labelled images to data.source (for example with the ingest flow, "
            "`python -m flows.ingest DROP`) and the next run retrains on them."
        )
    return (
        f"No new images since data version {after}; stages rerun because their settings or code changed: "
        f"{', '.join(retrained)}."
    )


def gate_outcome(root: Path, params: Params) -> dict:
    return read_json(Path(root) / Artifacts(params).gate_json, "gate")


def git(root: Path, *args: str) -> str:
    """Run git in root; a failure is a UserError carrying git's own message."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def edited_files(root: Path) -> list[str]:
    """Tracked files that differ from HEAD, staged or not, by name alone."""
    return git(root, "diff", "--name-only", "HEAD").splitlines()


def is_ignored(root: Path, path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0


def hand_off(stage: str, root: Path) -> str:
    """The revision (a commit) holding everything `stage` needs; return its hash."""
    from dvc.repo import Repo

    names = stage_names(root)
    upstream = names[: names.index(stage)]
    with contextlib.chdir(root), Repo(str(root)) as repo:
        records = [str(DVC_LOCK)] + [
            out.def_path for s in repo.index.stages if s.name in upstream for out in s.outs if not out.use_cache
        ]
        changed = [
            path for path in edited_files(root) if not any(path == r or path.startswith(f"{r}/") for r in records)
        ]
        if changed:
            raise StageFailed(
                f"stage '{stage}' runs on a GPU worker, which checks out a git revision, but "
                f"{', '.join(changed)} have uncommitted changes; commit them (or unset "
                "orchestration.gpu_work_pool to run it here)"
            )
        if upstream:
            repo.push(targets=upstream)
    for record in records:
        if (root / record).exists() and not is_ignored(root, record):
            git(root, "add", record)
    if git(root, "diff", "--cached", "--name-only"):
        git(
            root,
            "commit",
            "--quiet",
            "-m",
            f"dvc.lock and metrics of {', '.join(upstream)} before '{stage}' on the GPU pool",
        )
    # Pushed even when nothing was committed here: the user's own commits (a params change) are
    # part of the revision too, and the worker can only fetch what the remote holds.
    if git(root, "remote"):
        try:
            git(root, "push", "--quiet")
        except UserError as exc:
            raise StageFailed(
                f"stage '{stage}' runs on a GPU worker, which fetches the revision from the git remote, but {exc}"
            ) from None
    return git_revision(root)


def run_on_worker(stage: str, revision: str, root: Path) -> bool:
    """On a (GPU) worker's clone: check out the revision, pull the stage's inputs, reproduce it
    and push its outputs with their run-cache entry; True if it ran.

    The clone belongs to the worker, and every result leaves through the DVC remote: so the
    dvc.lock the stage writes here is put back afterwards, and the committed copies in a later
    revision replace a previous stage's uncommitted outputs (checkout --force). Local changes
    to tracked files, which would be someone's work, stop it before anything is touched."""
    from dvc.repo import Repo

    with exclusive(root / Artifacts(load_params(root / "params.yaml")).run_lock):  # one run per clone
        edited = edited_files(root)
        if edited:
            raise UserError(
                f"the worker's checkout {root} has local changes to {', '.join(edited)}; it must be "
                "a clone only the worker uses (commit or discard them)"
            )
        if git(root, "remote"):
            git(root, "fetch", "--quiet")
        git(root, "checkout", "--quiet", "--force", revision)
        try:
            with contextlib.chdir(root), Repo(str(root)) as repo:
                repo.pull(targets=[stage], with_deps=True, allow_missing=True)
            ran = reproduce(stage, root)
            with contextlib.chdir(root), Repo(str(root)) as repo:
                repo.push(targets=[stage], run_cache=True)
        finally:
            git(root, "reset", "--quiet", "--hard")
        return ran
