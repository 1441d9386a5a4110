"""How much a `dvc repro` costs when your folder did not change, and what one change costs, at
two folder sizes: the price of the `sources` stage that makes DVC see changes in data.source.

    python benchmarks/source_check.py --images 10000 100000

Runs by hand (not in CI). For each size it writes a synthetic ImageFolder of small JPEGs (the
bytes do not matter here: only how many files there are), makes a git+DVC project of this
repository's pipeline on it and reproduces `prepare` once. Then, each timed from the shell as
a user types it:

- sources_s: `vgg2resnet sources` on the unchanged folder (a stat per file, nothing read);
- noop_repro_s: `dvc repro prepare` on the unchanged folder (the sources stage, then DVC's own
  check of every stage it reaches, data/raw's files included);
- touched_repro_s: the same after touching 1% of the files (read and hashed again, same bytes:
  prepare does not rerun);
- added_repro_s: the same after adding one image (prepare reruns, reading only that file).

It prints each figure per size, in µs per file where the cost grows with the folder, and
`<figure>_us_per_file_ratio` between the two sizes: 1.0 is linear growth.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from data_throughput import dvc_cache_type
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def tiny_folder(root: Path, images: int, categories: int) -> Path:
    """`images` 16-px JPEGs in `categories` folders, each with other pixels."""
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"category_{i % categories:03d}"
        if i < categories:
            folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:07d}.jpg")
    return root


def project_on(folder: Path, work: Path) -> Path:
    """A git+DVC copy of this repository's pipeline whose data.source is the folder."""
    project = work / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = str(folder)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "cache.type", dvc_cache_type()]):
        subprocess.run(command, cwd=project, check=True)
    return project


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def settle() -> None:
    """Files written in the last two seconds are hashed on every run until their stat key settles
    (vgg2resnet.data.sources.settled): wait that out, as a folder edited earlier would be."""
    time.sleep(2.5)


def measure(images: int, categories: int, work: Path) -> dict[str, float]:
    folder = tiny_folder(work / "photos", images, categories)
    project = project_on(folder, work)
    settle()
    fresh = timed(["dvc", "repro", "prepare"], project)
    print(f"{images} images: fresh `dvc repro prepare` {fresh:.1f} s", flush=True)
    figures = {
        "sources_s": timed(["vgg2resnet", "sources"], project),
        "noop_repro_s": timed(["dvc", "repro", "prepare"], project),
    }
    files = sorted(folder.rglob("*.jpg"))
    for path in files[::100]:
        os.utime(path)
    settle()
    figures["touched_repro_s"] = timed(["dvc", "repro", "prepare"], project)
    Image.open(files[1]).transpose(Image.Transpose.ROTATE_90).save(files[0].with_name("added.jpg"))
    figures["added_repro_s"] = timed(["dvc", "repro", "prepare"], project)
    for name, seconds in figures.items():
        print(f"{images} images: {name}={seconds:.2f} ({1e6 * seconds / images:.0f} µs per file)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="source-check-", dir=args.work))
    try:
        small, large = (measure(n, args.categories, work / str(n)) for n in args.images)
        for name in small:
            ratio = (large[name] / args.images[1]) / (small[name] / args.images[0])
            print(f"{name.removesuffix('_s')}_us_per_file_ratio={ratio:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
