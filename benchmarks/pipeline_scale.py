"""Scale rehearsal: every stage of dvc.yaml, DVC push and pull, and the monitor, at two folder
sizes, so that a cost growing faster than the number of images shows as a ratio above 1.

    python benchmarks/pipeline_scale.py --images 10000 100000            # --size 224 for photos
    python benchmarks/pipeline_scale.py --images 1000000 --no-training    # what does not train

Runs by hand (CI runs its --no-training part once at 300 images so that it cannot rot; a test
runs every stage at 224 px). For each size it writes a synthetic ImageFolder (`--categories`
folders of small JPEGs, sides between 3/4 and 3/2 of `--size`, a colour per category under
noise), makes a git+DVC project of this repository's pipeline on it, with training capped to
`--steps` steps per epoch and one epoch, one cached view per image and a gate that lets any
student through (the figures are costs, not accuracy), and a BentoML model store of its own.
Then, each timed from the shell as a user types it, with the peak memory of its whole process
tree (proportional set size: the pages that DataLoader workers share with the process they were
forked from count once, not once per worker):

- every stage, one `dvc repro --single-item STAGE` at a time, in the pipeline's order;
- `dvc push` to a folder remote, `dvc status` of the unchanged workspace, and `dvc pull` into a
  fresh `git clone` of the project;
- `vgg2resnet monitor` over as many logged requests as there are images.

With --no-training the stages that train are not run and `dvc push`/`pull` carry the data only:
`sources`, `prepare`, `validate`, the DVC figures, and the monitor over logged requests made
from the images' own statistics (no model is needed to judge them).

Per stage and size it prints seconds, µs per image and peak memory (PSS) in MiB; with two sizes, per
stage, `STAGE_time_ratio=` (µs per image at the larger size over the smaller: 1.0 is linear
growth) and `STAGE_rss_ratio=` (peak memory at the larger size over the smaller: 1.0 is flat).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from data_throughput import dvc_cache_type
from peak_rss import peak_rss
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
DATA_STAGES = ["sources", "prepare", "validate"]  # what --no-training runs


def synthetic_folder(root: Path, images: int, categories: int, size: int) -> Path:
    """`images` JPEGs of varied sides around `size`, a colour per category under noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (categories, 3))
    for i in range(images):
        category = i % categories
        height, width = rng.integers(3 * size // 4, 3 * size // 2 + 1, size=2)
        pixels = colours[category] + rng.normal(0, 40, (height, width, 3))
        folder = root / f"category_{category:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:07d}.jpg", quality=85)
    return root


def settings(source: Path, size: int, steps: int, categories: int, images: int) -> dict:
    """The benchmark's overrides of params.yaml: capped training, a permissive gate."""
    train = {"epochs": 1, "max_steps_per_epoch": steps, "image_size": size}
    return {
        "data": {"source": str(source)},
        "validation": {"min_images_per_category": max(1, images // categories // 2), "near_duplicate_max_distance": 2},
        "teacher": train,
        "distill": {**train, "cache_views": 1, "average_best": None},
        "prune": {"epochs": 1},
        "gate": {
            "max_accuracy_drop": 100.0,
            "max_category_drop": 100.0,
            "max_latency_ratio": 100.0,
            "max_regression": 100.0,
            "min_teacher_margin": None,
            "bootstrap_samples": 200,
        },
        "monitoring": {"min_rows": 20, "window_hours": 1.0},
    }


def merged(base: dict, extra: dict) -> dict:
    return {
        k: merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in {**base, **extra}.items()
    }


PIPELINE = ("params.yaml", "dvc.yaml", ".dvcignore", "src", "services")


def snapshot(target: Path) -> Path:
    """This repository's pipeline as it is now: every size runs the same code, whatever is
    edited while the benchmark runs."""
    target.mkdir(parents=True)
    for name in PIPELINE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, target / name)
    return target


def make_project(project: Path, code: Path, remote: Path, overrides: dict) -> Path:
    """A git+DVC copy of the pipeline in `code`, with the overrides and a folder remote."""
    shutil.copytree(code, project)
    params = merged(yaml.safe_load((code / "params.yaml").read_text()), overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".gitignore").write_text("__pycache__/\n")
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "bench"],
        [BIN / "dvc", "init", "-q"],
        [BIN / "dvc", "config", "cache.type", dvc_cache_type()],
        [BIN / "dvc", "remote", "add", "-d", "folder", str(remote)],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "pipeline"],
    ):
        subprocess.run(command, cwd=project, check=True, stdout=subprocess.DEVNULL)
    return project


def measured(command: list, cwd: Path, log: Path, env: dict) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of a command run in cwd, its output appended to log."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, command))}\n")
        out.flush()
        rss = peak_rss(
            [str(c) for c in command], 0.25, proportional=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return time.perf_counter() - start, rss


def logged_requests(project: Path, count: int, store: Path, model_tag: str | None) -> Path:
    """`count` inference-log records in the last minutes, as the service writes them: the
    promoted version's reference rows (or, without a model, the manifest's image sizes)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    log_dir = project / params["monitoring"]["log_dir"]
    log_dir.mkdir(parents=True, exist_ok=True)
    if model_tag is not None:
        name, version = model_tag.split(":")
        rows = pd.read_parquet(store / "models" / name / version / "reference.parquet")
    else:
        manifest = pd.read_parquet(project / params["data"]["prepared_dir"] / "manifest.parquet")
        rows = manifest[["width", "height"]].astype(float).assign(prediction=manifest["category"])
    records = rows.sample(count, replace=True, random_state=0).to_dict(orient="records")
    stamp = datetime.now(UTC).isoformat()
    with (log_dir / "data.1.log").open("w") as out:
        for record in records:
            out.write(json.dumps({**record, "logged_at": stamp, "model_tag": model_tag or "", "retained_image": ""}))
            out.write("\n")
    return log_dir


def measure(images: int, args: argparse.Namespace, code: Path, work: Path) -> dict[str, tuple[float, int]]:
    start = time.perf_counter()
    folder = synthetic_folder(work / "photos", images, args.categories, args.size)
    print(f"{images} images: wrote the folder in {time.perf_counter() - start:.0f} s", flush=True)
    project = make_project(
        work / "project", code, work / "remote", settings(folder, args.size, args.steps, args.categories, images)
    )
    # PYTHONPATH: the snapshot's package, not the checkout's (an editable install) that may be edited meanwhile.
    env = {
        **os.environ,
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(project / "src"),
    }
    log = work / "commands.log"
    figures = {}
    time.sleep(2.5)  # the folder's stat keys settle (vgg2resnet.data.sources.settled), as an older folder's have
    for stage in DATA_STAGES if args.no_training else STAGES:
        figures[stage] = measured([BIN / "dvc", "repro", "--single-item", stage], project, log, env)
        report(images, stage, figures[stage])
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "reproduced"], cwd=project, check=True, stdout=subprocess.DEVNULL)
    targets = DATA_STAGES if args.no_training else []  # without training, only the data's outputs exist
    for name, command, cwd in (
        ("dvc_push", [BIN / "dvc", "push", *targets], project),
        ("dvc_status", [BIN / "dvc", "status"], project),
    ):
        figures[name] = measured(command, cwd, log, env)
        report(images, name, figures[name])
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    subprocess.run([BIN / "dvc", "config", "--local", "cache.type", dvc_cache_type()], cwd=clone, check=True)
    figures["dvc_pull"] = measured([BIN / "dvc", "pull", *targets], clone, log, env)
    report(images, "dvc_pull", figures["dvc_pull"])
    package = project / "reports" / "package.json"
    tag = json.loads(package.read_text())["model_tag"] if package.is_file() else None
    logged_requests(project, images, work / "bentoml", tag)
    if tag is not None:
        figures["monitor"] = measured([BIN / "vgg2resnet", "monitor"], project, log, env)
        report(images, "monitor", figures["monitor"])
    else:
        figures["read_log"] = measured([sys.executable, "-c", READ_LOG, str(project)], project, log, env)
        report(images, "read_log", figures["read_log"])
    return figures


# Without a promoted model there is no reference to judge against: what the monitor then costs
# is reading the window of the log.
READ_LOG = """
import sys
from datetime import datetime, timedelta, UTC
from vgg2resnet.config import load_params
from vgg2resnet.monitoring.monitor import read_inference_log
params = load_params("params.yaml")
window = read_inference_log(params.monitoring.log_dir, datetime.now(UTC) - timedelta(hours=1))
print(len(window.rows), "logged requests read")
"""


def report(images: int, name: str, figure: tuple[float, int]) -> None:
    seconds, rss = figure
    print(
        f"{images} images: {name} {seconds:.1f} s, {1e6 * seconds / images:.0f} µs per image, "
        f"peak PSS {rss / 2**20:.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, nargs="+", default=[10_000, 100_000], metavar="N", help="one or two folder sizes"
    )
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--size", type=int, default=32, help="network input side, px (teacher and student)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per epoch (one epoch)")
    parser.add_argument("--no-training", action="store_true", help="only the stages that do not train")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not 1 <= len(args.images) <= 2:
        parser.error("--images takes one or two sizes")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pipeline-scale-", dir=args.work))
    print(f"scratch folder {work}; each command's output goes to its commands.log", flush=True)
    try:
        code = snapshot(work / "code")
        results = [measure(n, args, code, work / str(n)) for n in args.images]
        if len(results) == 2:
            (small, large), (n_small, n_large) = results, args.images
            for name in small:
                time_ratio = (large[name][0] / n_large) / (small[name][0] / n_small)
                print(f"{name}_time_ratio={time_ratio:.2f} {name}_rss_ratio={large[name][1] / small[name][1]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
