"""Channel pruning: the pruned network on its own (FLOPs counted here by hand, forward,
backward, ONNX), and the `prune` stage in the session pipeline: its forms, the gate's table,
the reused logit cache, a reproducible rerun, and prune.enabled: false."""

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.compress.onnx import export_onnx
from vgg2resnet.compress.prune import prune_to_flops
from vgg2resnet.config import PRUNED_VARIANTS, load_params
from vgg2resnet.models.builders import build_teacher
from vgg2resnet.models.checkpoint import read_meta
from vgg2resnet.models.variants import OnnxRunner, TorchRunner

pytestmark = pytest.mark.slow
SIZE = 32


def conv_and_linear_flops(model: nn.Module, size: int, device: str = "cpu") -> int:
    """2 x multiply-adds of every convolution and linear layer, from their shapes and output
    sizes (hooks), independently of torch's FlopCounterMode."""
    total = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total.append(2 * output.numel() * module.in_channels // module.groups * k)
        else:
            total.append(2 * module.in_features * module.out_features)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    for handle in handles:
        handle.remove()
    return sum(total)


@pytest.fixture(scope="module")
def pruned() -> tuple[nn.Module, dict, int]:
    torch.manual_seed(0)
    model = models.resnet50(num_classes=10)
    before = conv_and_linear_flops(model, SIZE)
    return model, prune_to_flops(model, SIZE, 0.5, 8), before


def test_a_pruned_resnet50_has_at_most_the_target_flops_and_fewer_parameters(pruned):
    model, record, before = pruned
    after = conv_and_linear_flops(model, SIZE)
    assert record["flops_before"] == before and record["flops"] == after
    assert 0.4 < after / before <= 0.5  # the target, not far below it
    assert record["parameters"] == sum(p.numel() for p in model.parameters()) < record["parameters_before"]
    assert record["parameters_before"] == sum(p.numel() for p in models.resnet50(num_classes=10).parameters())
    assert model.fc.out_features == 10 and model.fc.in_features == record["features"] < 2048
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs) and record["channels"]["conv1"] == model.conv1.out_channels


def test_a_pruned_resnet50_trains_and_exports_to_onnx_with_matching_logits(pruned, tmp_path: Path):
    model = copy.deepcopy(pruned[0]).train()  # a training forward moves BatchNorm statistics
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    export_onnx(model, tmp_path / "pruned.onnx", SIZE, 18)
    (want, want_features), (have, have_features) = (
        TorchRunner(model, torch.device("cpu"))(images),
        OnnxRunner(tmp_path / "pruned.onnx", torch.device("cpu"))(images),
    )
    assert have_features.shape == (4, model.fc.in_features)
    torch.testing.assert_close(have, want, rtol=0, atol=1e-4 * float(want.abs().max()) + 1e-5)
    torch.testing.assert_close(
        have_features, want_features, rtol=0, atol=1e-4 * float(want_features.abs().max()) + 1e-5
    )


def onnx_flops_and_parameters(path: Path) -> tuple[int, int]:
    """FLOPs (2 x multiply-adds of every Conv and Gemm) and the PyTorch network's parameter
    count, read from an exported ONNX graph: its weights' shapes and the output sizes ONNX's own
    shape inference gives. The export folds each BatchNorm into the convolution before it, as
    a bias: each such bias stands for a BatchNorm's weight and bias (2 x channels). In an int8
    (QDQ) graph a weight reaches its Conv through DequantizeLinear, from an 8-bit initializer."""
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = shape_inference.infer_shapes(onnx.load(str(path))).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights.update(
        {
            node.output[0]: weights[node.input[0]]
            for node in graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in weights
        }
    )
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    flops = parameters = 0
    for node in graph.node:
        if node.op_type == "Conv":
            weight, (_, _, height, width) = weights[node.input[1]], shapes[node.output[0]]
            flops += 2 * height * width * weight.size
            parameters += weight.size + 2 * weight.shape[0] * (len(node.input) > 2)
        elif node.op_type == "Gemm":
            flops += 2 * weights[node.input[1]].size
            parameters += sum(weights[name].size for name in node.input[1:])
    return flops, parameters


def _val_predictions(params, path: Path, categories: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A model file's predicted category for every val image, in order, and the labels."""
    from vgg2resnet.data.datasets import eval_loader
    from vgg2resnet.data.transforms import transform_from_meta
    from vgg2resnet.models.variants import load_runner

    runner, meta = load_runner(path, categories)
    loader = eval_loader(params, "val", categories, 16, transform_from_meta(meta["preprocessing"]))
    return torch.cat([runner(images)[0].argmax(1) for images, *_ in loader]), loader.dataset.labels


def test_the_prune_stage_makes_both_forms_from_the_distilled_student(promoted_project: Path, monkeypatch):
    """The pruned forms, measured here: their FLOPs and parameters counted on the ONNX graphs,
    the fp32 form's val accuracy, its int8 form's agreement with it, its source's file hash."""
    from vgg2resnet.data.categories import data_categories

    monkeypatch.chdir(promoted_project)
    params = load_params("params.yaml")
    layout = Artifacts(params)
    categories = data_categories(params)
    record = json.loads(layout.pruning_record.read_text())
    student_flops, student_parameters = onnx_flops_and_parameters(layout.student("onnx_fp32"))
    flops, parameters = onnx_flops_and_parameters(layout.student("pruned_fp32"))
    assert record["enabled"] and flops <= params.prune.flops_ratio * student_flops
    assert parameters < student_parameters
    assert (record["flops_before"], record["flops"]) == (student_flops, flops)
    assert (record["parameters_before"], record["parameters"]) == (student_parameters, parameters)
    source = hashlib.sha256(layout.student().read_bytes()).hexdigest()
    for variant in PRUNED_VARIANTS:
        meta = read_meta(layout.student(variant))
        assert meta["variant"] == variant and meta["source_sha256"] == source
        assert (meta["flops"], meta["parameters"]) == (flops, parameters)
    assert onnx_flops_and_parameters(layout.student("pruned_int8"))[0] == flops  # the same network, quantized

    (fp32, labels), (int8, _) = (_val_predictions(params, layout.student(v), categories) for v in PRUNED_VARIANTS)
    accuracy = 100.0 * float((fp32 == labels).float().mean())
    assert record["val_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    agreement = 100.0 * float((fp32 == int8).float().mean())
    assert agreement >= params.gate.min_variant_agreement, agreement
    summary = json.loads((layout.training_metrics("prune") / "metrics.json").read_text())
    assert summary["val_accuracy_final"] == pytest.approx(accuracy, abs=1e-4)


def test_the_gate_judges_the_pruned_forms_beside_the_others(promoted_project: Path):
    """The gate's table of candidates against the model files: FLOPs counted on the ONNX graphs
    and, for the teacher, on its layers here; sizes from the files themselves."""
    gate = json.loads((promoted_project / "reports/gate.json").read_text())
    assert set(gate["candidates"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8", *PRUNED_VARIANTS}
    layout = Artifacts(load_params(promoted_project / "params.yaml"))
    categories = json.loads((promoted_project / "data/prepared/categories.json").read_text())
    with torch.device("meta"):
        teacher = build_teacher(read_meta(promoted_project / layout.teacher)["arch"], len(categories))
    teacher_flops = conv_and_linear_flops(teacher, SIZE, device="meta")
    for variant, candidate in gate["candidates"].items():
        form = promoted_project / layout.student(variant)
        graph = promoted_project / layout.student("onnx_fp32") if variant == "pytorch_fp32" else form
        assert candidate["flops"] == onnx_flops_and_parameters(graph)[0], variant
        assert candidate["flops_ratio"] == pytest.approx(candidate["flops"] / teacher_flops), variant
        assert candidate["size_mb"] == pytest.approx(form.stat().st_size / 1e6), variant
        assert {c["name"] for c in candidate["checks"]} >= {"accuracy_parity", "size_ratio", "latency_ratio"}
    full, pruned = gate["candidates"]["onnx_int8"], gate["candidates"]["pruned_int8"]
    assert pruned["flops"] < full["flops"] and pruned["size_mb"] < full["size_mb"]
    markdown = (promoted_project / "reports/gate.md").read_text()
    assert all(f"| {v} |" in markdown for v in PRUNED_VARIANTS) and "FLOPs vs teacher" in markdown


def test_rerunning_prune_reuses_the_logit_cache_and_makes_the_same_network(
    promoted_project: Path, tmp_path: Path, monkeypatch
):
    from vgg2resnet.distill import logit_cache
    from vgg2resnet.stages import prune

    monkeypatch.chdir(promoted_project)
    params = _settings(promoted_project, tmp_path)
    assert len(list((promoted_project / "checkpoints/distill").glob("teacher-logits-*"))) == 1
    caches = {p: p.stat().st_mtime_ns for p in (promoted_project / "checkpoints/distill").glob("teacher-logits-*/*")}
    built = []
    monkeypatch.setattr(logit_cache, "_fill", lambda *a, **k: built.append(a))
    prune.run(params)
    assert built == [] and caches  # the distill stage's cache, read, not rebuilt
    assert {
        p: p.stat().st_mtime_ns for p in (promoted_project / "checkpoints/distill").glob("teacher-logits-*/*")
    } == caches
    session = Artifacts(load_params("params.yaml"))
    for variant in PRUNED_VARIANTS:
        again, first = read_meta(Artifacts(params).student(variant)), read_meta(session.student(variant))
        assert again["weights_sha256"] == first["weights_sha256"]


def test_with_prune_disabled_the_stage_records_it_and_the_gate_weighs_the_rest(
    promoted_project: Path, tmp_path: Path, monkeypatch
):
    from vgg2resnet.stages import evaluate, gate, prune

    monkeypatch.chdir(promoted_project)
    params = _settings(promoted_project, tmp_path, enabled=False)
    (Artifacts(params).pruned_dir / "stale.onnx").write_bytes(b"from an earlier run")
    assert prune.run(params) == {"enabled": False}
    assert [p.name for p in Artifacts(params).pruned_dir.iterdir()] == ["prune.json"]
    assert json.loads((tmp_path / "metrics/prune/metrics.json").read_text()) == {"enabled": False}
    evaluate.run(params)
    result = gate.run(params)
    report = json.loads(Artifacts(params).gate_json.read_text())
    assert set(report["candidates"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    assert result["variant"] in (None, "pytorch_fp32", "onnx_fp32", "onnx_int8")


def _settings(project: Path, tmp_path: Path, **prune):
    models_dir = tmp_path / "models"
    # The forms the stage writes are left out: what the stage under test leaves is its own.
    shutil.copytree(project / "models", models_dir, ignore=shutil.ignore_patterns("pruned"))
    (models_dir / "pruned").mkdir()
    params = load_params(project / "params.yaml")
    return params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={
                    "models_dir": models_dir,
                    "metrics_dir": tmp_path / "metrics",
                    "reports_dir": tmp_path / "reports",
                }
            ),
            "prune": params.prune.model_copy(update=prune),
            "serving": params.serving.model_copy(update={"model_name": "vgg2resnet-prune-check"}),
        }
    )
