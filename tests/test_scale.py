"""The pipeline at users' sizes: every stage of dvc.yaml at the 224 px users' VGG-16s take, on a
handful of images (one training step each), then the promoted model served over HTTP; and the
scale benchmark's stages that do not train, run small so that it cannot rot (its goals stay in
the benchmark)."""

import io
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import (
    ROOT,
    TINY_PARAMS,
    make_image_folder,
    make_project,
    promoted_tag,
    run,
    stale_stages,
    write_params,
)

pytestmark = pytest.mark.slow
SIZE = 224
CATEGORIES = ["zero", "one", "two"]


def test_every_stage_runs_at_224_px_and_the_service_classifies_a_224_px_upload(tmp_path: Path):
    import bentoml

    from vgg2resnet.config import load_params
    from vgg2resnet.monitoring.monitor import read_inference_log
    from vgg2resnet.packaging import store
    from vgg2resnet.serving.server import local_server

    images = make_image_folder(tmp_path / "images", per_category=10, categories=CATEGORIES, size=SIZE)
    project = make_project(tmp_path / "project", tmp_path / "remote")
    one_step = {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 4, "image_size": SIZE}
    write_params(
        project,
        {
            **TINY_PARAMS,
            "data": {**TINY_PARAMS["data"], "source": str(images)},
            "teacher": one_step,
            "distill": {**one_step, "cache_views": 1},
            "compress": {"calibration_images": 8, "calibration_batch_size": 4},
            "evaluate": {"batch_size": 8, "latency_batch_size": 2, "latency_warmup": 1, "latency_runs": 2},
            "monitoring": {**TINY_PARAMS["monitoring"], "projection_images": 16, "reference_images": 16},
        },
    )
    run(["dvc", "repro"], project)
    assert stale_stages(project) == {}

    params = load_params(project / "params.yaml")
    tag = promoted_tag(project)
    version = bentoml.models.get(tag)
    assert version.info.metadata["preprocessing"]["image_size"] == SIZE
    assert len(store.read_reference(version)) == 6  # every val image: fewer than reference_images

    # A photo-sized upload of another shape: the service resizes it as evaluation did.
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    upload = io.BytesIO()
    Image.fromarray(pixels).save(upload, format="JPEG")
    started = datetime.now(UTC)
    with local_server(tag, cwd=project, project_root=ROOT, params_file=project / "params.yaml") as url:
        answer = requests.post(
            f"{url}/classify", files={"image": ("photo.jpg", upload.getvalue(), "image/jpeg")}, timeout=120
        )
        # The pixel limit follows the served model's input: 600 x 600 px is over 8 times a
        # 32-px input's pixels (tests/test_service.py) and within 8 times this one's.
        side = int((params.serving.max_image_area * SIZE**2) ** 0.5) + 1
        for width, status in ((600, 200), (side, 400)):
            blank = io.BytesIO()
            Image.new("L", (width, width)).save(blank, format="PNG")
            sent = requests.post(f"{url}/classify", files={"image": ("b.png", blank.getvalue())}, timeout=120)
            assert sent.status_code == status, sent.text
        assert f"the {SIZE}x{SIZE} px the model reads" in sent.json()["error"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["category"] in CATEGORIES
    logged = read_inference_log(project / params.monitoring.log_dir, since=started).rows
    assert logged[["width", "height"]].values.tolist() == [[400, 300], [600, 600]]


def test_the_scale_benchmark_measures_the_data_stages_dvc_and_the_log_read(tmp_path: Path):
    """The benchmark's --no-training run, small: the stages that train are measured by the same
    loop, and the test above runs every stage (a whole benchmark run would train a second time)."""
    output = run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "pipeline_scale.py"),
            "--images",
            "300",
            "--categories",
            "10",
            "--no-training",
            "--work",
            str(tmp_path),
        ],
        ROOT / "benchmarks",
    ).stdout
    measured = re.findall(r"^300 images: (\w+) [\d.]+ s, \d+ µs per image, peak PSS (\d+) MiB$", output, re.MULTILINE)
    data_stages = ["sources", "prepare", "validate"]
    assert [name for name, _ in measured] == [*data_stages, "dvc_push", "dvc_status", "dvc_pull", "read_log"], output
    assert all(int(mib) > 0 for _, mib in measured)
