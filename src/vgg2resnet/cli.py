"""The `vgg2resnet` command: one subcommand per pipeline stage, plus helpers.

vgg2resnet prepare            # what `dvc repro prepare` runs (likewise every stage)
vgg2resnet data-version       # the DVC hash of data/raw
vgg2resnet demo               # serve, send traffic, report drift
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from vgg2resnet.config import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__.splitlines()[0]
)
err = Console(stderr=True, soft_wrap=True)
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]


def _setup_logging() -> None:
    # Libraries log at WARNING and above; the project's own progress at INFO.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("vgg2resnet").setLevel(logging.INFO)


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Register func as a subcommand: UserError becomes a one-paragraph message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return app.command(name=func.__name__.replace("_", "-"))(wrapper)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _run_stage(name: str, params: Path) -> dict:
    """Every stage command is the same: load params.yaml, take the project's run lock, call
    vgg2resnet.stages.<name>.run."""
    from vgg2resnet.artifacts import Artifacts
    from vgg2resnet.config import load_params
    from vgg2resnet.locking import exclusive

    settings = load_params(params)
    with exclusive(Artifacts(settings).run_lock):
        return importlib.import_module(f"vgg2resnet.stages.{name}").run(settings)


@command
def sources(params: ParamsOption = Path("params.yaml")) -> None:
    """Record what the pipeline reads outside the repository (your folder, teacher and weight files),
    so `dvc repro` reruns the stages that read what changed."""
    _print_json(_run_stage("sources", params))


@command
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Build data/raw (demo or your ImageFolder) and the manifest with its splits."""
    _print_json(_run_stage("prepare", params))


@command
def validate(params: ParamsOption = Path("params.yaml")) -> None:
    """Run the Great Expectations suite over the manifest; exit 2 if a check fails."""
    _print_json(_run_stage("validate", params))


def _run_training_stage(name: str, params: Path) -> None:
    """A stage that trains: as runtime.processes ranks under torchrun when that is above 1 (this
    command launches itself), else here; one answer, from rank 0."""
    from vgg2resnet.config import load_params
    from vgg2resnet.training.placement import launch_command

    loaded = load_params(params)
    launch = launch_command(loaded.runtime, sys.argv)
    if launch is not None:
        logging.getLogger("vgg2resnet").info("%s: runtime.processes ranks under torchrun: %s", name, " ".join(launch))
        raise typer.Exit(subprocess.run(launch, check=False).returncode)
    result = importlib.import_module(f"vgg2resnet.stages.{name}").run(loaded)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_json(result)


@command
def teacher(params: ParamsOption = Path("params.yaml")) -> None:
    """Import your VGG-16 checkpoint (teacher.checkpoint) or train the demo teacher (runtime.processes ranks)."""
    _run_training_stage("teacher", params)


@command
def distill(params: ParamsOption = Path("params.yaml")) -> None:
    """Distill the ResNet-50 student from the teacher (runtime.processes ranks)."""
    _run_training_stage("distill", params)


@command
def compress(params: ParamsOption = Path("params.yaml")) -> None:
    """Export the student to ONNX (parity-checked) and quantize it to int8 (train-split calibration)."""
    _print_json(_run_stage("compress", params))


@command
def prune(params: ParamsOption = Path("params.yaml")) -> None:
    """Prune the student's channels to prune.flops_ratio of its FLOPs, KD fine-tune it (runtime.processes
    ranks), export ONNX fp32 and int8."""
    _run_training_stage("prune", params)


@command
def evaluate(params: ParamsOption = Path("params.yaml")) -> None:
    """Evaluate the teacher and every student variant on the test split: accuracy, size, latency."""
    _print_json(_run_stage("evaluate", params))


@command
def gate(
    params: ParamsOption = Path("params.yaml"),
    strict: Annotated[bool, typer.Option(help="exit 3 when the student is rejected")] = False,
) -> None:
    """Apply the promotion policy to every student variant; write reports/gate.json, gate.md and gate.html."""
    from vgg2resnet.config import load_params
    from vgg2resnet.stages import gate as stage

    _print_json(stage.run(load_params(params), strict=strict))


@command
def package(params: ParamsOption = Path("params.yaml")) -> None:
    """Promote the gate's choice to the BentoML store and build its Bento (skipped on a rejection)."""
    _print_json(_run_stage("package", params))


@command
def monitor(
    params: ParamsOption = Path("params.yaml"),
    since: Annotated[datetime | None, typer.Option(help="start of the window (ISO time, UTC)")] = None,
    model_tag: Annotated[
        str | None, typer.Option(help="the version whose traffic to judge (default: the one that served last)")
    ] = None,
) -> None:
    """Compare logged traffic with its model version's reference: Evidently report + JSON in reports/drift/."""
    from vgg2resnet.config import load_params
    from vgg2resnet.monitoring.monitor import run_monitor

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    _print_json(run_monitor(load_params(params), since=since, model_tag=model_tag))


@command
def simulate_traffic(
    url: Annotated[
        str, typer.Option(help="the running service, on this machine (a loopback address)")
    ] = "http://127.0.0.1:3000",
    corruption: Annotated[str | None, typer.Option(help="brightness|contrast|blur|noise|rotation|occlusion")] = None,
    severity: Annotated[int, typer.Option(min=1, max=5)] = 3,
    requests: Annotated[int | None, typer.Option(help="images to send (default monitoring.traffic_requests)")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Send test-split images, clean or corrupted, to a service on this machine (with the
    bearer token when serving.auth_token_env is set)."""
    from vgg2resnet.config import load_params
    from vgg2resnet.monitoring.traffic import send_traffic

    loaded = load_params(params)
    _print_json(send_traffic(loaded, url, requests or loaded.monitoring.traffic_requests, corruption, severity))


@command
def demo(params: ParamsOption = Path("params.yaml")) -> None:
    """After `dvc repro`: serve the promoted model, send clean then drifted traffic, report drift."""
    from vgg2resnet.config import load_params
    from vgg2resnet.orchestration.demo import run_demo

    _print_json(run_demo(load_params(params), params))


@command
def rollback(
    tag: Annotated[str | None, typer.Argument(help="version to restore (default: the previous)")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make an earlier promoted model current again (saved as a new version; nothing is deleted)."""
    from vgg2resnet.config import load_params
    from vgg2resnet.packaging.store import rollback as restore

    typer.echo(restore(load_params(params).serving.model_name, tag))


@command
def data_version(params: ParamsOption = Path("params.yaml")) -> None:
    """Print the data version: DVC's md5 of data.raw_dir."""
    from vgg2resnet.config import load_params
    from vgg2resnet.lineage import data_version as compute

    typer.echo(compute(load_params(params).data.raw_dir))
