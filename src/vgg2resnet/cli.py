"""The `vgg2resnet` command: one subcommand per pipeline stage, plus helpers.

    vgg2resnet prepare            # what `dvc repro prepare` runs
    vgg2resnet data-version       # the DVC hash of data/raw
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from vgg2resnet.errors import UserError

# Telemetry off before any of these libraries is imported.
for _name, _value in {
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err = Console(stderr=True, soft_wrap=True)
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]


def _setup_logging(verbose: bool = False) -> None:
    # Libraries log at WARNING and above; the project's own progress at INFO.
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True,
    )
    logging.getLogger("vgg2resnet").setLevel(logging.DEBUG if verbose else logging.INFO)


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Register func as a subcommand: UserError becomes a one-paragraph message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return app.command(name=func.__name__.replace("_", "-"))(wrapper)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@command
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Build data/raw (demo or your ImageFolder) and the manifest with its splits."""
    from vgg2resnet.config import load_params
    from vgg2resnet.stages import prepare as stage

    _print_json(stage.run(load_params(params)))


@command
def validate(params: ParamsOption = Path("params.yaml")) -> None:
    """Run the Great Expectations suite over the manifest; exit 2 if a check fails."""
    from vgg2resnet.config import load_params
    from vgg2resnet.stages import validate as stage

    _print_json(stage.run(load_params(params)))


@command
def data_version(params: ParamsOption = Path("params.yaml")) -> None:
    """Print the data version: DVC's md5 of data.raw_dir."""
    from vgg2resnet.config import load_params
    from vgg2resnet.lineage import data_version as compute

    typer.echo(compute(load_params(params).data.raw_dir))

