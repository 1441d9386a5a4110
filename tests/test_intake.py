"""`prepare` at scale: on every core, incremental, never touching the user's folder, and storing
the images once more on disk rather than twice."""

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vgg2resnet.config import Params
from vgg2resnet.data import intake, sources
from vgg2resnet.stages import prepare

from .conftest import make_image_folder, repo_params, run, write_params
from .userdata import edit_keeping_times, stored_images


def _params(tmp_path: Path, source: Path, workers: int | str = 0) -> Params:
    return repo_params(
        {
            "data": {
                "source": str(source),
                "raw_dir": str(tmp_path / "raw"),
                "prepared_dir": str(tmp_path / "prepared"),
            },
            "runtime": {"num_workers": workers},
            "paths": {"state_dir": str(tmp_path / "state")},
        }
    )


def _photos(root: Path, count: int, first: int = 0) -> Path:
    """JPEG, BMP and PNG photos of two categories, of varied sizes."""
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        pixels = rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8)
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.{('jpg', 'bmp', 'png')[i % 3]}")
    return root


def _state(root: Path) -> dict[str, tuple]:
    """Every file's content hash and its whole stat: mode, owner, size, inode and all three times."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        facts = (stat.st_mode, stat.st_uid, stat.st_gid, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
        if path.is_file():
            facts += (stat.st_size, stat.st_atime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        state[path.relative_to(root).as_posix()] = facts
    return state


@pytest.mark.skipif(not hasattr(os, "O_NOATIME"), reason="reading without updating access times needs O_NOATIME")
def _spy_on_reads(monkeypatch) -> list[str]:
    """The names of the source files read from now on (in this process)."""
    read: list[str] = []
    reader = intake.read_source
    monkeypatch.setattr(intake, "read_source", lambda path: read.append(Path(path).name) or reader(path))
    return read


def test_prepare_leaves_the_users_folder_byte_and_stat_identical(tmp_path: Path):
    source = _photos(tmp_path / "mine", 24)
    (source / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    _state(source)  # this test's own first read sets the access times (relatime); later reads leave them
    before = _state(source)
    params = _params(tmp_path, source, workers=2)
    prepare.run(params.model_copy(update={"data": params.data.model_copy(update={"on_undecodable": "skip"})}))
    assert _state(source) == before


def test_prepare_on_two_workers_writes_what_one_process_writes(tmp_path: Path):
    source = _photos(tmp_path / "mine", 40)
    assert prepare.run(_params(tmp_path / "one", source, 0)) == prepare.run(_params(tmp_path / "two", source, 2))
    for name in ("manifest.parquet", "categories.json"):
        assert (tmp_path / "one" / "prepared" / name).read_bytes() == (
            tmp_path / "two" / "prepared" / name
        ).read_bytes()
    files = sorted(p.relative_to(tmp_path / "one" / "raw") for p in (tmp_path / "one" / "raw").rglob("*.*"))
    assert files and all(
        (tmp_path / "one" / "raw" / f).read_bytes() == (tmp_path / "two" / "raw" / f).read_bytes() for f in files
    )


def test_a_rerun_decodes_only_new_and_changed_files_and_writes_what_a_fresh_run_writes(tmp_path: Path, monkeypatch):
    source = _photos(tmp_path / "mine", 30)
    decoded: list[str] = []
    facts = intake.image_facts
    monkeypatch.setattr(
        intake,
        "image_facts",
        lambda payload, max_pixels: decoded.append(hashlib.sha256(payload).hexdigest()) or facts(payload, max_pixels),
    )
    params = _params(tmp_path / "project", source)  # one process, so the counter sees every decode
    prepare.run(params)
    assert len(decoded) == 30
    raw = tmp_path / "project" / "raw"
    (first_shard,) = raw.glob("*.tar")
    inode = first_shard.stat().st_ino

    # One new photo; one BMP edited in place with its size and timestamps put back.
    _photos(source, 1, first=30)
    edited = next(p for p in sorted(source.rglob("*.bmp")))
    payload = edit_keeping_times(edited)  # the last pixel byte: still a BMP of the same size
    decoded.clear()
    prepare.run(params)
    new = source / "dog" / "0030.jpg"
    assert sorted(decoded) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (new, edited))

    fresh = _params(tmp_path / "fresh", source)
    prepare.run(fresh)
    assert _facts(tmp_path / "project").equals(_facts(tmp_path / "fresh"))
    # The first shard, still mostly listed, was linked, not written again; the new content alone
    # went into one new shard.
    assert (raw / first_shard.name).stat().st_ino == inode
    (added,) = set(raw.glob("*.tar")) - {raw / first_shard.name}
    with tarfile.open(added) as tar:
        assert sorted(tar.getnames()) == sorted(p.relative_to(source).as_posix() for p in (new, edited))
    assert stored_images(raw) == {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*.*")}
    assert stored_images(raw)[edited.relative_to(source).as_posix()] == payload


def _facts(project: Path) -> pd.DataFrame:
    """The manifest without where each image lies in the shards, which depends on the history."""
    return pd.read_parquet(project / "prepared" / "manifest.parquet").drop(columns=["shard", "offset"])


def test_a_rerun_does_not_read_a_file_whose_stat_key_is_unchanged(tmp_path: Path, monkeypatch):
    source = _photos(tmp_path / "mine", 12)
    params = _params(tmp_path / "project", source, workers=0)  # in process, so the spy sees every read
    read = _spy_on_reads(monkeypatch)
    prepare.run(params)
    assert len(read) == 12
    read.clear()
    prepare.run(params)  # every file was written just now, inside the racy window: all read again
    assert len(read) == 12

    monkeypatch.setattr(sources, "RACY_WINDOW_NS", 0)  # as if the files had been written long ago
    prepare.run(params)
    read.clear()
    prepare.run(params)
    assert read == []
    recorded = intake.SourceStats.load(tmp_path / "project" / "state" / "prepare" / "source-stats.parquet", source)
    assert len(recorded) == 12

    # Any write moves the ctime, which nobody can set back: a same-size edit with the mtime put back,
    # and a touch that keeps the content, are both read again; a new file is read; the rest are not.
    edited, touched = sorted(source.rglob("*.bmp"))[:2]
    payload = edit_keeping_times(edited)
    os.utime(touched)
    _photos(source, 1, first=12)
    read.clear()
    prepare.run(params)
    assert sorted(read) == sorted([edited.name, touched.name, "0012.jpg"])
    raw = tmp_path / "project" / "raw"
    assert stored_images(raw)[edited.relative_to(source).as_posix()] == payload

    fresh = _params(tmp_path / "fresh", source)
    prepare.run(fresh)
    assert _facts(tmp_path / "project").equals(_facts(tmp_path / "fresh"))
    assert stored_images(raw) == {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*.*")}

    read.clear()
    off = params.model_copy(update={"data": params.data.model_copy(update={"reuse_by_stat": False})})
    prepare.run(off)
    assert len(read) == 13


def test_facts_of_another_facts_version_or_over_the_pixel_limit_are_not_reused(tmp_path: Path, monkeypatch):
    source = _photos(tmp_path / "mine", 6)
    params = _params(tmp_path / "project", source)
    prepare.run(params)
    manifest = tmp_path / "project" / "prepared" / "manifest.parquet"
    assert len(intake.Previous.load(manifest).facts) == 6
    monkeypatch.setattr(intake, "FACTS_VERSION", intake.FACTS_VERSION + 1)
    assert intake.Previous.load(manifest).facts == {}
    monkeypatch.undo()

    first = pd.read_parquet(manifest)
    limit = int((first["width"] * first["height"]).median())
    small = params.model_copy(
        update={"data": params.data.model_copy(update={"max_pixels": limit, "on_undecodable": "record"})}
    )
    prepare.run(small)
    rows = pd.read_parquet(manifest)
    assert list(rows["decodes"]) == list(first["width"] * first["height"] <= limit)
    assert 0 < rows["decodes"].sum() < len(rows)


def test_dvc_links_data_raw_to_its_cache_so_the_images_are_stored_once_more_not_twice(project: Path, tmp_path: Path):
    source = make_image_folder(tmp_path / "mine", per_category=6)
    write_params(project, {"data": {"source": str(source)}})
    run(["dvc", "repro", "prepare"], project)
    images = [p for p in source.rglob("*") if p.is_file()]
    # A tar member takes a 512-byte header and pads its bytes to 512; a shard ends in a 10 KiB record.
    source_bytes = sum(p.stat().st_size + 1024 for p in images) + 10240
    raw_files = [p for p in (project / "data" / "raw").rglob("*") if p.is_file()]
    cached = [
        project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        for digest in (hashlib.md5(p.read_bytes()).hexdigest() for p in raw_files)
    ]
    assert raw_files and all(p.is_file() for p in cached)
    stored = {p.stat().st_ino: p.stat().st_size for p in raw_files + cached}  # a linked file counts once
    assert sum(stored.values()) <= 1.1 * source_bytes


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.sampled_from(["keep", "touch", "edit"]), min_size=6, max_size=6), added=st.integers(0, 2))
def test_a_rerun_reads_exactly_the_files_that_were_written_or_added(
    tmp_path_factory, monkeypatch, actions: list[str], added: int
):
    work = tmp_path_factory.mktemp("stat")
    source = _photos(work / "mine", 6)
    params = _params(work / "project", source)
    # An edited JPEG may no longer decode; what is read is the question here, not what decodes.
    params = params.model_copy(update={"data": params.data.model_copy(update={"on_undecodable": "record"})})
    monkeypatch.setattr(sources, "RACY_WINDOW_NS", 0)  # as if the files had been written long ago
    prepare.run(params)
    files = sorted(p for p in source.rglob("*.*"))
    for path, action in zip(files, actions):
        stat = path.stat()
        if action == "touch":
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same times back: only ctime moves
        elif action == "edit":
            edit_keeping_times(path)
    _photos(source, added, first=6)
    read = _spy_on_reads(monkeypatch)
    prepare.run(params)
    expected = [p.name for p, action in zip(files, actions) if action != "keep"]
    assert sorted(read) == sorted(expected + [f"{i:04d}.{('jpg', 'bmp', 'png')[i % 3]}" for i in range(6, 6 + added)])
