"""A change outside the repository is never missed: the `sources` stage's records change exactly
when the bytes a stage reads do, and under real DVC each edit of the user's folder or teacher
files reruns what reads it, and nothing else."""

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vgg2resnet.config import Params, UserError
from vgg2resnet.data import sources
from vgg2resnet.orchestration.pipeline import data_change
from vgg2resnet.stages import prepare
from vgg2resnet.stages import sources as stage

from .conftest import make_project, merge, repo_params, run, stale_stages, user_params, write_params
from .userdata import (
    COLOURS,
    TEACHER_ORDER,
    colour_image,
    edit_keeping_times,
    make_colour_teacher,
    make_user_folder,
    stored_images,
)

EDITS = ("add", "replace", "remove", "touch", "rewrite", "none")


def _params(work: Path, source: Path | str, **teacher):
    return repo_params(
        {
            "data": {
                "source": str(source),
                "raw_dir": str(work / "raw"),
                "prepared_dir": str(work / "prepared"),
                "sources_dir": str(work / "sources"),
            },
            "paths": {"state_dir": str(work / "state")},
            "runtime": {"num_workers": 0},
            "teacher": {k: str(v) for k, v in teacher.items()},
        }
    )


def _contents(folder: Path) -> dict[str, str]:
    """What the pipeline would read: each image's path under the folder and content hash."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def _edit(folder: Path, edit: str, pick: int, rng: np.random.Generator) -> None:
    """One edit of the folder. `rewrite` writes the same bytes as a new file (new inode and
    times, as a copy or a sync tool does); `replace` writes other bytes with the old times."""
    images = sorted(folder.rglob("*.jpg"))
    path = images[pick % len(images)]
    category = path.relative_to(folder).parts[0]
    if edit == "add":
        colour_image(COLOURS[category], rng).save(folder / category / f"new-{rng.integers(1 << 30)}.jpg")
    elif edit == "replace":
        stat = path.stat()
        colour_image(COLOURS[category], rng).save(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif edit == "remove" and sum(1 for p in images if p.relative_to(folder).parts[0] == category) > 3:
        path.unlink()
    elif edit == "touch":
        os.utime(path)
    elif edit == "rewrite":
        payload = path.read_bytes()
        path.unlink()
        path.write_bytes(payload)


def _read_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files hashed from now on (in this process)."""
    read: list[str] = []
    hasher = sources.content_sha256
    monkeypatch.setattr(sources, "content_sha256", lambda path: read.append(Path(path).name) or hasher(path))
    return read


@settings(max_examples=25)
@given(
    edits=st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 99)), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_the_images_record_changes_exactly_when_an_image_is_added_changed_or_removed(
    tmp_path_factory, edits: list[tuple[str, int]], seed: int
):
    work = tmp_path_factory.mktemp("record")
    folder = make_user_folder(work / "photos", per_category=4, seed=seed)
    params = _params(work, folder)
    rng = np.random.default_rng(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "RACY_WINDOW_NS", 0)  # as if every file had been written long ago
        patch.setattr(sources, "BATCH_FILES", 3)  # the keys are merged and written across many batches
        stage.run(params)
        for edit, pick in edits:
            before, record = _contents(folder), (work / "sources" / "images.json").read_text()
            keys = {p: sources.stat_key(folder / p) for p in before}
            _edit(folder, edit, pick, rng)
            with pytest.MonkeyPatch.context() as spy:
                read = _read_spy(spy)
                changed = stage.run(params)["changed"]
            after = _contents(folder)
            assert ("prepare" in changed) == (after != before), edit
            assert ((work / "sources" / "images.json").read_text() != record) == (after != before)
            # Only the files whose stat key moved were read (broken JPEGs included, junk files not).
            moved = {Path(p).name for p in after if keys.get(p) != sources.stat_key(folder / p)}
            assert sorted(read) == sorted(moved), edit
            assert set(changed) <= {"prepare"}


# Names whose characters sort around "/" ("-", " ", ".", "0") and beyond ASCII: a listing in
# string order differs from one folder by folder, which the merge of recorded keys relies on.
_NAME = st.text(alphabet="ab-_ 0.é~", min_size=1, max_size=4).filter(lambda n: not n.startswith(".") and n.strip())


_FILE = st.tuples(st.sampled_from(["c", "c-d", "c d", "c0", "é"]), st.lists(_NAME, max_size=2), _NAME)


@settings(max_examples=40, deadline=None)
@given(
    before=st.lists(_FILE, min_size=1, max_size=12), removed=st.lists(st.booleans()), added=st.lists(_FILE, max_size=6)
)
def test_over_any_folder_layout_a_rerun_reads_exactly_the_files_added(tmp_path_factory, before, removed, added):
    work = tmp_path_factory.mktemp("layout")
    folder = work / "photos"

    def write(files) -> set[Path]:
        """The files written: those not there yet."""
        paths = {folder.joinpath(category, *subfolders, f"{name}.jpg") for category, subfolders, name in files}
        paths = {path for path in paths if not path.exists()}
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(str(path).encode())
        return paths

    first = sorted(write(before))
    params = _params(work, folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "RACY_WINDOW_NS", 0)
        patch.setattr(sources, "BATCH_FILES", 2)
        stage.run(params)
        for path, gone in zip(first, removed):
            category = path.relative_to(folder).parts[0]
            if gone and sum(1 for p in _contents(folder) if p.split("/")[0] == category) > 1:
                path.unlink()  # a category keeps one image at least
        new = write(added)
        read = _read_spy(patch)
        record = stage.run(params)["images"]
    assert sorted(read) == sorted(path.name for path in new)
    assert record["images"] == len(_contents(folder))


def test_the_same_images_give_the_same_record_wherever_they_lie(tmp_path: Path):
    first = make_user_folder(tmp_path / "a" / "photos")
    second = tmp_path / "b" / "photos"
    shutil.copytree(first, second)
    records = [stage.run(_params(tmp_path / name, folder))["images"] for name, folder in (("a", first), ("b", second))]
    assert records[0]["sha256"] == records[1]["sha256"] and records[0]["images"] == records[1]["images"]


def test_teacher_files_are_watched_by_content(tmp_path: Path, monkeypatch):
    folder = make_user_folder(tmp_path / "photos", per_category=4)
    checkpoint, categories = tmp_path / "vgg16.pt", tmp_path / "categories.json"
    checkpoint.write_bytes(b"weights")
    categories.write_text('["yellow", "red", "blue", "green"]')
    params = _params(tmp_path, folder, checkpoint=checkpoint, categories_file=categories)
    monkeypatch.setattr(sources, "RACY_WINDOW_NS", 0)
    assert stage.run(params)["changed"] == ["prepare", "teacher", "distill"]  # the first run writes every record
    assert stage.run(params)["changed"] == []
    os.utime(checkpoint)
    read = _read_spy(monkeypatch)
    assert stage.run(params)["changed"] == [] and read == ["vgg16.pt"]  # touched: read again, same bytes
    edit_keeping_times(checkpoint)
    assert stage.run(params)["changed"] == ["teacher"]
    categories.write_text('["red", "yellow", "blue", "green"]')
    assert stage.run(params)["changed"] == ["prepare", "teacher"]  # prepare orders the data as the file does
    checkpoint.unlink()
    with pytest.raises(UserError, match=r"teacher\.checkpoint: .*vgg16\.pt is not a file"):
        stage.run(params)


def test_a_key_not_yet_settled_is_not_trusted(tmp_path: Path, monkeypatch):
    """A file written in the tick its key was taken in could change again without moving the key:
    it is hashed again until its key is older than the racy window."""
    folder = make_user_folder(tmp_path / "photos", per_category=4)
    params = _params(tmp_path, folder)
    monkeypatch.setattr(sources, "RACY_WINDOW_NS", 10**18)  # every key is too recent
    stage.run(params)
    read = _read_spy(monkeypatch)
    assert stage.run(params)["changed"] == [] and len(read) == len(_contents(folder))


# Under real DVC: a project on a copy of the user's folder and teacher, reproduced up to the
# teacher (imported, so a rerun costs seconds), then edited as a user would.


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _settle(*paths: Path) -> None:
    """Wait until every file's times lie outside the racy window, as they do for a folder edited
    more than two seconds before the next `dvc repro`."""
    newest = max(os.stat(p).st_ctime_ns for root in paths for p in [root, *root.rglob("*")])
    time.sleep(max(0.0, (newest + sources.RACY_WINDOW_NS) / 1e9 - time.time() + 0.2))


@pytest.fixture(scope="module")
def source_project(tmp_path_factory, user_teacher: dict[str, Path]) -> dict:
    base = tmp_path_factory.mktemp("sources")
    folder = make_user_folder(base / "photos", per_category=8)
    teacher = {name: Path(shutil.copy(path, base / path.name)) for name, path in user_teacher.items()}
    project = make_project(base / "project", base / "remote")
    write_params(project, user_params(folder, teacher))
    _settle(folder)
    repro = run(["dvc", "repro", "teacher"], project)
    assert _ran(repro.stdout) == ["sources", "prepare", "validate", "teacher"]
    return {"project": project, "folder": folder, "teacher": teacher}


def _repro(project: Path, target: str) -> list[str]:
    return _ran(run(["dvc", "repro", target], project).stdout)


def _manifest(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data/prepared/manifest.parquet")


@pytest.mark.slow
def test_with_nothing_changed_only_the_sources_stage_runs(source_project: dict):
    assert _repro(source_project["project"], "teacher") == ["sources"]


@pytest.mark.slow
def test_the_teacher_stage_reruns_when_its_checkpoint_changes_at_the_same_path_and_only_then(source_project: dict):
    project, checkpoint = source_project["project"], source_project["teacher"]["checkpoint"]
    original = checkpoint.read_bytes()
    torch.save(make_colour_teacher(list(reversed(TEACHER_ORDER))), checkpoint)
    try:
        assert _repro(project, "teacher") == ["sources", "teacher"]
        saved = torch.load(project / "models/teacher.pt", weights_only=True)["state_dict"]
        given = torch.load(checkpoint, weights_only=True)
        assert all(torch.equal(saved[k], given[k]) for k in given)
        os.utime(checkpoint)
        _settle(checkpoint.parent)
        assert _repro(project, "teacher") == ["sources"]  # touched, same bytes: nothing to redo
    finally:
        checkpoint.write_bytes(original)


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["add", "replace", "remove"])
def test_an_added_changed_or_removed_image_reruns_prepare_and_the_stages_after_it(source_project: dict, edit: str):
    project, folder = source_project["project"], source_project["folder"]
    before = _contents(folder)
    _edit(folder, edit, 5, np.random.default_rng(7))
    assert _contents(folder) != before
    assert _repro(project, "prepare") == ["sources", "prepare"]
    rows = _manifest(project)
    assert dict(zip(rows["path"], rows["sha256"])) == {
        p: s for p, s in _contents(folder).items() if p in set(rows["path"])
    }
    assert set(_contents(folder)) - set(rows["path"]) <= {"green/empty.jpg", "blue/shoot-0/truncated.jpg"}
    [reasons] = stale_stages(project)["teacher"]  # what `dvc repro` reruns next
    assert reasons["changed deps"]["data/raw"] == "modified", reasons


@pytest.mark.slow
def test_a_touched_or_copied_image_reruns_nothing(source_project: dict):
    project, folder = source_project["project"], source_project["folder"]
    rng = np.random.default_rng(0)
    _edit(folder, "touch", 3, rng)
    _edit(folder, "rewrite", 4, rng)
    _settle(folder)
    assert _repro(project, "prepare") == ["sources"]


def _fresh_params(project: Path, work: Path):
    """The project's settings, with every output in `work`: a prepare that has never run."""
    return Params.model_validate(
        merge(
            yaml.safe_load((project / "params.yaml").read_text()),
            {
                "data": {
                    "raw_dir": str(work / "raw"),
                    "prepared_dir": str(work / "prepared"),
                    "sources_dir": str(work / "sources"),
                },
                "paths": {"state_dir": str(work / "state")},
            },
        )
    )


@pytest.mark.slow
@settings(max_examples=3)
@given(
    edits=st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 99)), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_after_any_edits_dvc_repro_leaves_the_manifest_a_fresh_prepare_of_the_folder_writes(
    source_project: dict, tmp_path_factory, edits: list[tuple[str, int]], seed: int
):
    project, folder = source_project["project"], source_project["folder"]
    rng = np.random.default_rng(seed)
    for edit, pick in edits:
        before = _contents(folder)
        _edit(folder, edit, pick, rng)
        ran = _repro(project, "prepare")
        if _contents(folder) != before:
            assert ran == ["sources", "prepare"], edit
        fresh = tmp_path_factory.mktemp("fresh")
        prepare.run(_fresh_params(project, fresh))
        # Where each image lies in the shards depends on the history; nothing else may.
        pd.testing.assert_frame_equal(
            _manifest(project).drop(columns=["shard", "offset"]),
            pd.read_parquet(fresh / "prepared/manifest.parquet").drop(columns=["shard", "offset"]),
        )
        assert stored_images(project / "data/raw") == stored_images(fresh / "raw")


STAGES = ["sources", "prepare", "validate", "teacher", "distill"]


@pytest.mark.parametrize(
    ("before", "after", "ran", "says"),
    [
        ("v1", "v1", [True, False, False, False, False], "No new images since data version v1: retraining would"),
        ("v1", "v1", [True, True, False, False, False], "No new images since data version v1: retraining would"),
        (
            "v1",
            "v1",
            [True, False, False, False, True],
            "No new images since data version v1; stages rerun because their settings or code changed: distill.",
        ),
        (
            "v1",
            "v2",
            [True, True, True, True, True],
            "New data version v2 (was v1); stages run on it: validate, teacher, distill.",
        ),
        (None, "v1", [True, True], "New data version v1; stages run on it: none yet."),
        ("v1", "v1", [True], "The run stopped before `prepare`; the data version is still v1."),
    ],
)
def test_a_run_says_what_it_did_with_the_data(before, after, ran, says):
    assert data_change(before, after, dict(zip(STAGES, ran))).startswith(says)
