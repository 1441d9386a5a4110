"""The compress stage and the gate's variants: ONNX export parity, train-only int8 calibration,
and a deliberately broken int8 variant that the gate rejects by name while fp32 passes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.compress.onnx import quantize_int8
from vgg2resnet.config import load_params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import read_meta, write_sidecar
from vgg2resnet.models.variants import load_runner, predict_logits
from vgg2resnet.packaging import store
from vgg2resnet.stages import evaluate, gate, package

pytestmark = pytest.mark.slow


def test_onnx_export_reproduces_pytorch(promoted_project: Path, monkeypatch):
    monkeypatch.chdir(promoted_project)
    params = load_params(promoted_project / "params.yaml")
    categories = data_categories(params)
    torch_runner, meta = load_runner(Path("models/student.pt"), categories)
    onnx_runner, onnx_meta = load_runner(Path("models/student-fp32.onnx"), categories)
    assert (
        onnx_meta["variant"] == "onnx_fp32"
        and onnx_meta["source_sha256"] == read_meta(Path("models/student.pt"))["sha256"]
    )
    loader = eval_loader(
        params, "val", categories, 7, transform_from_meta(meta["preprocessing"])
    )  # odd batches: dynamic axis
    expected, got = predict_logits(torch_runner, loader), predict_logits(onnx_runner, loader)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= params.compress.parity_max_abs_logit
    images = next(iter(loader))[0]
    assert torch.allclose(onnx_runner(images)[1], torch_runner(images)[1], atol=1e-3)  # the drift features too
    # Inputs no split holds, at batch sizes the export never saw, to a tolerance of the test's own
    # (1e-4 of the logits' range), not the stage's threshold.
    generator = torch.Generator().manual_seed(0)
    size = meta["preprocessing"]["image_size"]
    for batch in (1, 3, 5):
        noise = torch.randn(batch, 3, size, size, generator=generator) * 2
        (want, want_features), (have, have_features) = torch_runner(noise), onnx_runner(noise)
        torch.testing.assert_close(have, want, rtol=0, atol=1e-4 * float(want.abs().max()) + 1e-5)
        torch.testing.assert_close(
            have_features, want_features, rtol=0, atol=1e-4 * float(want_features.abs().max()) + 1e-5
        )


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_int8_calibration_reads_train_images_only(promoted_project: Path, tmp_path: Path, monkeypatch):
    """What calibration actually decodes, recorded at the data source, not what it says it read;
    and the compress stage's int8 model is the one calibrating on exactly those images makes."""
    from vgg2resnet.compress.export import quantize_on_train_sample
    from vgg2resnet.data import datasets

    monkeypatch.chdir(promoted_project)
    params = load_params("params.yaml")
    layout = Artifacts(params)
    read: list[int] = []
    image = datasets.ImageDataset.image
    monkeypatch.setattr(datasets.ImageDataset, "image", lambda self, i: read.append(i) or image(self, i))
    meta = read_meta(layout.student("onnx_fp32"))
    said = quantize_on_train_sample(
        params,
        layout.student("onnx_fp32"),
        tmp_path / "int8.onnx",
        data_categories(params),
        transform_from_meta(meta["preprocessing"]),
    )
    manifest = pd.read_parquet(layout.manifest).set_index("path")
    read = datasets.load_split(layout.manifest, "train")["path"].iloc[read].tolist()  # the rows the dataset reads
    assert (
        len(read)
        == len(set(read))
        == min(params.compress.calibration_images, int((manifest["split"] == "train").sum()))
    )
    assert set(manifest.loc[read, "split"]) == {"train"}
    assert sorted(read) == sorted(said["paths"])
    made, stage = _initializers(tmp_path / "int8.onnx"), _initializers(layout.student("onnx_int8"))
    assert made.keys() == stage.keys()
    assert all(np.array_equal(made[name], stage[name]) for name in made)
    quantized = sum(a.size for a in stage.values() if a.dtype in (np.int8, np.uint8))
    assert quantized > 0.9 * sum(a.size for a in stage.values())  # the weights are stored in 8 bits
    assert layout.student("onnx_int8").stat().st_size < 0.3 * layout.student("onnx_fp32").stat().st_size


def test_a_broken_int8_variant_fails_the_gate_by_name_while_fp32_passes(
    promoted_project: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.chdir(promoted_project)
    models = tmp_path / "models"
    shutil.copytree(promoted_project / "models", models)
    params = load_params(promoted_project / "params.yaml")
    params = params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={"models_dir": models, "metrics_dir": tmp_path / "metrics", "reports_dir": tmp_path / "reports"}
            ),
            "serving": params.serving.model_copy(update={"model_name": "vgg2resnet-broken-int8-check"}),
        }
    )
    fp32, int8 = Artifacts(params).student("onnx_fp32"), Artifacts(params).student("onnx_int8")
    # Activation ranges calibrated on one constant image: every real image saturates them.
    size = read_meta(fp32)["preprocessing"]["image_size"]
    quantize_int8(fp32, int8, [np.zeros((1, 3, size, size), dtype=np.float32)])
    meta = {k: v for k, v in read_meta(int8).items() if k not in ("sha256", "bytes")}
    write_sidecar(int8, {**meta, "calibration": {"split": "constant zeros", "paths": []}})
    evaluate.run(params)
    result = gate.run(params)
    report = json.loads((tmp_path / "reports/gate.json").read_text())
    broken = report["candidates"]["onnx_int8"]
    assert not broken["passed"] and "fp32_agreement" in broken["failed"]
    reason = next(c["reason"] for c in broken["checks"] if c["name"] == "fp32_agreement")
    assert "agreement with the fp32 student" in reason
    assert report["candidates"]["pytorch_fp32"]["passed"]
    assert result["decision"] == "promote" and result["variant"] != "onnx_int8"
    package.promote(params)
    assert store.current("vgg2resnet-broken-int8-check").info.metadata["variant"] == result["variant"]
    assert "FAIL: " in (tmp_path / "reports/gate.md").read_text()


@pytest.mark.parametrize("prefer, expected", [("smallest", "pruned_int8"), ("first", "pytorch_fp32")])
def test_the_policy_picks_the_preferred_passing_variant(
    promoted_project: Path, tmp_path: Path, monkeypatch, prefer: str, expected: str
):
    monkeypatch.chdir(promoted_project)
    params = load_params(promoted_project / "params.yaml")
    params = params.model_copy(
        update={
            "gate": params.gate.model_copy(update={"prefer": prefer, "min_variant_agreement": 0.0}),
            "paths": params.paths.model_copy(update={"reports_dir": tmp_path / "reports"}),
        }
    )
    assert gate.run(params)["variant"] == expected
