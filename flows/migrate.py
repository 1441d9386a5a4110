"""Prefect flow `migrate`: every dvc.yaml stage as one task, in the DAG's order.

    python -m flows.migrate                 # run locally, no server needed
    prefect --no-prompt deploy --all        # deployments from prefect.yaml

DVC decides what is stale (an up-to-date stage is skipped) and dvc.lock records each run; the
flow adds retries on lock contention, GPU routing of the heavy stages and Prefect artifacts.
The `sources` stage runs every time, so images added to, changed in or removed from your
folder since the last run reach this one; when there are none, the `data-change` artifact
says so instead of the run ending silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, load_params
from vgg2resnet.locking import exclusive
from vgg2resnet.orchestration.pipeline import (
    StageFailed,
    data_change,
    data_version_of,
    gate_outcome,
    hand_off,
    is_stale,
    reproduce,
    run_on_worker,
    stage_names,
)


def _lock_contention(task, task_run, state) -> bool:
    """Retry only what can pass on a second try: another DVC command holding the repo lock."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - inspecting the failure, not handling it
        return "Unable to acquire lock" in str(exc)
    return False


@task(retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=_lock_contention)
def run_stage(stage: str, project_dir: str) -> bool:
    return reproduce(stage, Path(project_dir))


@task
def run_stage_on_gpu(stage: str, project_dir: str, deployment: str, timeout_s: int, poll_s: float) -> bool:
    """Run the stage on the GPU work pool's deployment, then take its result from DVC's run cache.

    A stage DVC finds up to date is skipped here, as run_stage would skip it. Before dispatch,
    hand_off makes the revision self-sufficient; the worker checks it out, pulls the inputs, runs
    the stage and pushes its outputs and run-cache entry; here `dvc repro --pull` of the same
    stage (same deps, params and command) finds the entry and checks the outputs out instead of
    running it again, and records them in this checkout's dvc.lock.
    """
    if not is_stale(stage, Path(project_dir)):
        return False  # up to date here: no GPU time, no commit, no dispatch
    revision = hand_off(stage, Path(project_dir))
    child = run_deployment(
        name=deployment, parameters={"stage": stage, "revision": revision}, timeout=timeout_s, poll_interval=poll_s
    )
    if not child.state.is_completed():
        raise StageFailed(f"stage '{stage}' on {deployment} ended {child.state.name}: {child.state.message}")
    return reproduce(stage, Path(project_dir), pull=True)


def _publish(root: Path, params: Params) -> dict:
    layout = Artifacts(params)
    gate = gate_outcome(root, params)
    create_markdown_artifact(
        key="gate-report",
        markdown=(root / layout.gate_markdown).read_text(),
        description=f"promotion gate: {gate['decision']}",
    )
    seen = gate.get("disagreements")
    create_link_artifact(
        key="gate-page",
        link=(root / layout.gate_html).as_uri(),
        link_text="gate.html",
        description=(
            f"charts, confusion matrices and the {seen['disagreements']} of "
            f"{seen['test_images']} test images on which teacher and {seen['student']} "
            f"disagree ({seen['student wrong, teacher right']} where only the teacher "
            f"is right, {seen['teacher wrong, student right']} where only the student is)"
            if seen
            else "the gate could not read the evaluation"
        ),
    )
    report = json.loads((root / layout.evaluation_report).read_text())
    models = {"teacher": report["teacher"], **report["candidates"]}
    create_table_artifact(
        key="migration-metrics",
        table=[
            {
                "model": name,
                "top1": m["top1"],
                "top5": m["top5"],
                "size_mb": m["size_mb"],
                "cpu_latency_ms_p50": m["cpu"]["latency_ms_p50"],
                "promoted": name == gate.get("variant"),
            }
            for name, m in models.items()
        ],
        description="held-out test split",
    )
    return gate


@flow(name="migrate", log_prints=True)
def migrate(project_dir: str = ".") -> dict[str, bool]:
    """Reproduce the pipeline; fail with the reason when validation or the gate stops it."""
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    ran: dict[str, bool] = {}
    # The project's run lock, which the stage commands under `dvc repro` inherit: a second run
    # (scheduled, drift-triggered or typed) stops instead of writing over this one.
    with exclusive(root / Artifacts(params).run_lock):
        before = data_version_of(root, params)
        try:
            _run_stages(root, params, ran)
        finally:  # also when validation or the gate stops the run: say what it did with the data
            change = data_change(before, data_version_of(root, params), ran)
            logger.info(change)
            create_markdown_artifact(key="data-change", markdown=change, description="what this run did with the data")
    logger.info(
        "stages run: %s; skipped (up to date): %s",
        [s for s, r in ran.items() if r],
        [s for s, r in ran.items() if not r],
    )
    return ran


def _run_stages(root: Path, params: Params, ran: dict[str, bool]) -> None:
    """Every stage in the DAG's order, noting in `ran` whether each ran; the reports as artifacts."""
    orchestration, layout = params.orchestration, Artifacts(params)
    # One stage at a time: DVC commands must never run concurrently on one repository.
    for stage in stage_names(root):
        if orchestration.gpu_work_pool and stage in orchestration.gpu_stages:
            ran[stage] = run_stage_on_gpu(
                stage, str(root), orchestration.gpu_deployment, orchestration.gpu_timeout_s, orchestration.gpu_poll_s
            )
        else:
            ran[stage] = run_stage(stage, str(root))
        if stage == "validate":
            result = json.loads((root / layout.validation_result).read_text())
            create_markdown_artifact(
                key="validation-report",
                markdown=(
                    f"Validation passed: {result['summary']['expectations']} expectations; "
                    f"Data Docs at `{root / layout.validation_docs_index}`"
                ),
            )
        if stage == "gate":
            gate = _publish(root, params)
            if gate["decision"] != "promote":
                failed = "; ".join(c["reason"] for c in gate["checks"] if not c["passed"])
                raise StageFailed(f"the gate rejected the student: {failed}")
        if stage == "package":
            package = json.loads((root / layout.package_json).read_text())
            create_markdown_artifact(
                key="promoted-model",
                markdown=(
                    f"Serving `{package['model_tag']}` ({package['variant']}"
                    f"{', a new version' if package['new_version'] else ', already promoted'}); "
                    f"Bento `{package['bento']}`: `{package['serve']}`"
                ),
            )


@flow(name="migrate-stage")
def migrate_stage(stage: str, revision: str, project_dir: str = ".") -> bool:
    """On a (GPU) worker: check out the revision, pull the inputs, reproduce one stage, push it."""
    return run_on_worker(stage, revision, Path(project_dir).resolve())


if __name__ == "__main__":
    migrate()
