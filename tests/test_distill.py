"""Models, the logit cache and the distill stage on tiny data with the real architectures."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from vgg2resnet.config import UserError, load_params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, train_views
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.distill.logit_cache import CacheLayout, build_cache, open_cache
from vgg2resnet.distill.teacher_signal import CachedTeacher, LiveTeacher, StaleCacheError
from vgg2resnet.models.builders import build_student, build_teacher
from vgg2resnet.models.checkpoint import import_user_teacher, load_model
from vgg2resnet.training.loop import (
    Training,
    TrainingDiverged,
    Updates,
    build_optimizer,
    build_scheduler,
    train_one_epoch,
)
from vgg2resnet.training.objective import kd_loss
from vgg2resnet.training.placement import Placement

from .conftest import dvc_directory_md5, repo_params, run, write_params
from .userdata import stored_images

CPU = Placement(device=torch.device("cpu"))


def test_builders_make_n_category_heads_and_backprop():
    x = torch.randn(2, 3, 32, 32)
    for model in (build_teacher("vgg16", 7), build_teacher("vgg16_bn", 7), build_student(7)):
        out = model(x)
        assert out.shape == (2, 7)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pretrained_backbone_from_local_file(tmp_path: Path):
    imagenet = build_student(1000)
    torch.save(imagenet.state_dict(), tmp_path / "resnet50.pth")
    student = build_student(5, tmp_path / "resnet50.pth")
    assert torch.equal(student.conv1.weight, imagenet.conv1.weight)
    assert student.fc.out_features == 5
    with pytest.raises(UserError, match="not found"):
        build_student(5, tmp_path / "missing.pth")
    # A VGG-16 checkpoint given as the student's backbone: its names are what tell, so a few
    # bytes per tensor show it (a real one would write 550 MB).
    with torch.device("meta"):
        names = list(build_teacher("vgg16", 1000).state_dict())
    torch.save({name: torch.zeros(1) for name in names}, tmp_path / "vgg.pth")
    with pytest.raises(UserError, match="does not match"):
        build_student(5, tmp_path / "vgg.pth")


def test_pickled_objects_are_refused(tmp_path: Path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="refused to load"):
        build_student(5, tmp_path / "pickled.pt")


@pytest.mark.slow
def test_dvc_repro_distill_produces_models_metrics_and_plots(distilled_project: Path, monkeypatch):
    """What the models' records say, held to facts found here: the files' own hashes and sizes,
    DVC's hash of data/raw computed from its files, the data's folders, the saved weights'
    architectures, and the saved student's val accuracy measured again."""
    models, raw = distilled_project / "models", distilled_project / "data/raw"
    teacher = json.loads((models / "teacher.json").read_text())
    student = json.loads((models / "student.json").read_text())
    digests = {}
    for meta, name in ((teacher, "teacher"), (student, "student")):
        data = (models / f"{name}.pt").read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        assert meta["sha256"] == digests[name] and meta["bytes"] == len(data)
        assert meta["data_version"] == dvc_directory_md5(raw)
    assert student["teacher_sha256"] == digests["teacher"]
    assert student["bytes"] < 0.25 * teacher["bytes"]
    categories = sorted({path.split("/")[0] for path in stored_images(raw)})  # no teacher file: the folders, in order
    with torch.device("meta"):  # the architectures' tensors, without their memory
        built = {"teacher": build_teacher("vgg16_bn", len(categories)), "student": build_student(len(categories))}
    for name, model in built.items():
        saved = torch.load(models / f"{name}.pt", weights_only=True, mmap=True)["state_dict"]
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in model.state_dict().items()}, name
    student_model, student_meta = load_model(models / "student.pt", categories)

    # The student's val accuracy, measured here on the val images the manifest lists.
    monkeypatch.chdir(distilled_project)
    params = load_params("params.yaml")
    loader = eval_loader(params, "val", categories, 16, transform_from_meta(student_meta["preprocessing"]))
    with torch.no_grad():
        right = sum(int((student_model(images).argmax(1) == labels).sum()) for images, labels, *_ in loader)
    measured = 100.0 * right / len(loader.dataset)
    manifest = pd.read_parquet(distilled_project / "data/prepared/manifest.parquet")
    assert len(loader.dataset) == int((manifest["split"] == "val").sum()) > 0
    metrics = json.loads((distilled_project / "metrics/distill/metrics.json").read_text())
    assert student["val_accuracy"] == pytest.approx(measured, abs=1e-4)
    assert metrics["val_accuracy_selected"] == pytest.approx(measured, abs=1e-4)
    assert metrics["val_accuracy_selected"] >= metrics["val_accuracy_best_epoch"]  # the average only if no worse
    assert metrics["step"] == params.distill.epochs - 1  # one logged step per epoch
    assert metrics["averaged_epochs"] in ([1, 2], [2, 1])  # distill.average_best (3) over two epochs: both
    state = distilled_project / "checkpoints/distill"
    assert not (state / "last.pt").exists() and not (state / "best").exists()  # a finished run keeps no state
    status = run(["dvc", "status", "distill"], distilled_project).stdout.lower()
    assert "changed" not in status
    plots = run(["dvc", "plots", "show", "--json"], distilled_project).stdout
    assert "val_accuracy" in plots


@pytest.mark.slow
def test_checkpoint_with_other_categories_is_refused(distilled_project: Path):
    categories = json.loads((distilled_project / "data/prepared/categories.json").read_text())
    _, meta = load_model(distilled_project / "models/student.pt", categories)
    assert meta["preprocessing"]["image_size"] == 32
    with pytest.raises(UserError, match="different order"):
        load_model(distilled_project / "models/student.pt", list(reversed(categories)))
    with pytest.raises(UserError, match="missing"):
        load_model(distilled_project / "models/student.pt", [*categories[:-1], "ten"])


@pytest.mark.slow
def test_logit_cache_gives_the_live_teachers_loss_and_catches_staleness(
    distilled_project: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.chdir(distilled_project)
    params = load_params("params.yaml")
    categories = data_categories(params)
    teacher, _ = load_model(Path("models/teacher.pt"), categories)
    views = train_views(params, params.distill, categories)
    live = LiveTeacher(teacher, CPU)
    in_process = params.runtime.model_copy(update={"num_workers": 0})
    exact = CacheLayout(len(views), 2, len(categories), "float32", None, chunk_images=7)
    logits = build_cache(tmp_path / "fp32", exact, live, views, 16, in_process, CPU, False)
    cached = CachedTeacher(logits, live, tolerance=1e-3)
    items = [(i, v) for i in range(8) for v in range(2)]
    images, labels, indices, view_ids = next(iter(DataLoader(views, sampler=items, batch_size=16)))
    student_logits = torch.randn(16, len(categories))
    from_cache = kd_loss(student_logits, cached(images, indices, view_ids), labels, 4.0, 0.5)[0]
    from_live = kd_loss(student_logits, live(images, indices, view_ids), labels, 4.0, 0.5)[0]
    assert from_cache.item() == pytest.approx(from_live.item(), abs=1e-4)

    # fp16 (the default): seeded views are the same tensors whichever worker decodes them, so
    # the chunks are the same bytes; the check allows for fp16's rounding and no more.
    half = CacheLayout(len(views), 2, len(categories), "float16", None, chunk_images=7)
    build_cache(tmp_path / "fp16", half, live, views, 16, in_process, CPU, False)
    two_workers = params.runtime.model_copy(update={"num_workers": 2})
    build_cache(tmp_path / "fp16-2", half, live, views, 16, two_workers, CPU, False)
    chunks = sorted((tmp_path / "fp16").glob("values-*.npy"))
    assert len(chunks) == half.chunks > 1
    assert all(c.read_bytes() == (tmp_path / "fp16-2" / c.name).read_bytes() for c in chunks)
    cached = CachedTeacher(open_cache(tmp_path / "fp16", half), live, tolerance=1e-3)
    assert cached.check(views, fraction=0.1, seed=0, batch_size=16, runtime=in_process) <= 1e-3

    stale = np.load(chunks[0]) + np.float16(0.5)  # another teacher's outputs, on disk
    np.save(chunks[0], stale)
    with pytest.raises(StaleCacheError, match=f"cache_tolerance.*delete {tmp_path / 'fp16'}"):
        CachedTeacher(open_cache(tmp_path / "fp16", half), live, 1e-3).check(
            views, fraction=1.0, seed=0, batch_size=16, runtime=in_process
        )


@pytest.mark.parametrize("arch, other", [("vgg16", "vgg16_bn"), ("vgg16_bn", "vgg16")])
def test_user_teacher_checkpoint_is_imported_and_checked(tmp_path: Path, arch: str, other: str):
    from torchvision import models

    state = getattr(models, arch)(weights=None, num_classes=3).state_dict()  # saved as a user would
    torch.save(state, tmp_path / "teacher.pth")
    model = import_user_teacher(tmp_path / "teacher.pth", arch, ["a", "b", "c"])
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(UserError, match="head has 3 outputs"):
        import_user_teacher(tmp_path / "teacher.pth", arch, ["a", "b", "c", "d"])
    with pytest.raises(UserError, match=r"check teacher\.arch"):
        import_user_teacher(tmp_path / "teacher.pth", other, ["a", "b", "c"])


def test_nan_loss_stops_training():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.flatten(1)[:, :4]) * float("nan")

    model = Broken()
    params = repo_params().teacher.model_copy(update={"epochs": 1, "batch_size": 2, "optimizer": "sgd", "lr": 0.1})
    optimizer = build_optimizer(model, params)
    batch = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 0]))]
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train_one_epoch(
            model,
            batch,
            Updates(optimizer, build_scheduler(optimizer, params, 1)),
            Training(params, repo_params().runtime, CPU),
            desc="test",
        )


RECORDER = Path(__file__).with_name("record_batches.py")


def _copy_for_distill(source: Path, dest: Path, **distill) -> Path:
    """The session's project, ready to distil again with these settings: the teacher logit cache
    comes along (its key does not cover epochs or batch size), training state does not."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", ".dvc", "last.pt", "metrics"))
    write_params(
        dest, {"distill": {"epochs": 2, "max_steps_per_epoch": 3, "ema_decay": 0.9, "average_best": 2, **distill}}
    )
    return dest


def _distill(project: Path, **env: str) -> str:
    """Run distill, recording every rank's batches; its log."""
    (project / "batches").mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(RECORDER), "distill"],
        cwd=project,
        text=True,
        capture_output=True,
        env={**os.environ, "RECORD_BATCHES": str(project / "batches"), **env},
    )
    assert result.returncode == 0, result.stderr
    assert "teacher logit cache: reusing" in result.stderr  # the session's cache, not a rebuild
    return result.stderr


def _student(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models/student.pt", weights_only=True)["state_dict"]


def _read_until(process: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """The child's stderr as it comes, up to the first `marker` (or its end, or the timeout)."""
    import selectors

    said, deadline = b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while marker not in said and time.monotonic() < deadline:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(process.stderr.fileno(), 1 << 16)
                if not chunk:
                    break  # the child closed stderr: it ended
                said += chunk
    return said


@pytest.mark.slow
def test_distill_killed_mid_run_resumes_to_the_same_weights(distilled_project: Path, tmp_path: Path):
    straight = _copy_for_distill(distilled_project, tmp_path / "straight")
    _distill(straight)
    command = [sys.executable, "-m", "vgg2resnet", "distill"]
    resumed = _copy_for_distill(distilled_project, tmp_path / "resumed")
    process = subprocess.Popen(
        command, cwd=resumed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    state = resumed / "checkpoints" / "distill" / "last.pt"
    # fit() saves an epoch's state before the next epoch's progress bar is drawn, so the first
    # "epoch 2/2" on the child's stderr means last.pt of epoch 1 is on disk and epoch 2 has
    # begun: killed then, the run dies inside epoch 2, with no poll interval to miss it in.
    said = _read_until(process, b"epoch 2/2", timeout=300)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert b"epoch 2/2" in said, said.decode(errors="replace")[-3000:]
    assert state.exists(), "no epoch checkpoint was written before the kill"
    killed = torch.load(state, weights_only=True)
    assert killed["epoch"] == 1 and [e["epoch"] for e in killed["best"]] == [1]  # the kept epoch survives
    assert (resumed / "checkpoints/distill/best/epoch-1.pt").is_file()
    log = run(command, resumed).stderr
    assert "resuming from" in log
    for project in (straight, resumed):  # EMA on, and the two epochs' EMA weights averaged
        metrics = json.loads((project / "metrics/distill/metrics.json").read_text())
        assert metrics["val_accuracy_ema"] is not None and metrics["averaged_epochs"] in ([1, 2], [2, 1])

    a, b = _student(straight), _student(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_process_ddp_trains_what_one_process_does_on_the_same_global_batch(distilled_project: Path, tmp_path: Path):
    """Two gloo ranks (runtime.processes: 2) of 8 images per step against one process of 16: each rank trains on its
    own half of every one-process batch, and both runs end on the same weights and BatchNorm
    statistics. The one-process reference forwards each rank's half on its own, as DDP does
    (tests/record_batches.py), on one thread, as torchrun gives each rank: a random-start
    ResNet-50 on 32 px images is so ill-conditioned that rounding alone (two threads instead
    of one) moves its weights after 6 steps by about 80 % of their update, so only the same
    arithmetic can be compared, and then to 1e-6. One epoch of three steps."""
    reference = _copy_for_distill(distilled_project, tmp_path / "reference", epochs=1, ema_decay=None)
    _distill(reference, PER_RANK_FORWARD="2", OMP_NUM_THREADS="1")
    ddp = _copy_for_distill(distilled_project, tmp_path / "ddp", epochs=1, batch_size=8, ema_decay=None)
    write_params(ddp, {"runtime": {"processes": 2}})  # the command launches itself under torchrun
    log = _distill(ddp)
    assert "runtime.processes ranks under torchrun" in log and "all 2 ranks hold identical weights" in log

    single = json.loads((reference / "batches/rank-0.json").read_text())
    ranks = [json.loads((ddp / f"batches/rank-{r}.json").read_text()) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for step, (whole, a, b) in enumerate(zip(single, *ranks)):
        assert len(a) == len(b) == 8 and len(whole) == 16, step
        assert a == whole[0::2] and b == whole[1::2], step  # dealt out in turn
    images = [i for rank in ranks for batch in rank for i, _ in batch]
    assert len(images) == len(set(images)) == 48  # within the epoch, no image is trained on twice

    categories = json.loads((reference / "data/prepared/categories.json").read_text())
    torch.manual_seed(load_params(reference / "params.yaml").runtime.seed)
    start = build_student(len(categories)).state_dict()  # where both runs began
    one, two = _student(reference), _student(ddp)
    assert one.keys() == two.keys() == start.keys()
    assert not all(torch.equal(one[k], start[k]) for k in start)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_dvc_repro_with_two_processes_builds_the_cache_in_shards_and_trains(distilled_project: Path, tmp_path: Path):
    """runtime.processes: 2 under `dvc repro`: the distill stage launches two gloo ranks, each
    builds its share of a fresh cache's chunks, and both train one epoch to the same weights.
    The two ranks' chunks hold what the session's one-process cache holds, to fp16 rounding."""

    def skipped(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        return {
            n
            for n in names
            if (here == distilled_project and n in ("checkpoints", "batches"))
            or (here.name == ".dvc" and n in ("cache", "tmp"))
        }

    project = tmp_path / "two"
    shutil.copytree(distilled_project, project, ignore=skipped)
    write_params(
        project, {"runtime": {"processes": 2}, "distill": {"epochs": 1, "average_best": None, "cache_chunk_images": 10}}
    )
    # --single-item: runtime.processes is a teacher param too, and this test is about distill
    log = run(["dvc", "repro", "--single-item", "distill"], project).stderr
    assert "runtime.processes ranks under torchrun" in log and "all 2 ranks hold identical weights" in log
    built = {int(rank): int(n) for rank, n in re.findall(r"rank (\d) built (\d+) chunks? of", log)}
    assert "distill" not in run(["dvc", "status", "distill"], project).stdout  # recorded in dvc.lock

    (sharded,) = (project / "checkpoints/distill").glob("teacher-logits-*")
    (single,) = (distilled_project / "checkpoints/distill").glob("teacher-logits-*")
    whole = CacheLayout(**json.loads((single / "layout.json").read_text()))
    layout = dataclasses.replace(whole, chunk_images=10)
    assert built.keys() == {0, 1} and sum(built.values()) == layout.chunks > 2 and min(built.values()) >= 1
    two, one = open_cache(sharded, layout), open_cache(single, whole)
    images, view_ids = (
        torch.tensor(a) for a in zip(*[(i, v) for i in range(layout.images) for v in range(layout.views)])
    )
    a, b = two[images, view_ids], one[images, view_ids]
    assert ((a - b).abs() <= 2 * two.rounding(b) + 1e-5).all()
