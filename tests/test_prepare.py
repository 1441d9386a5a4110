"""The prepare stage: demo data, user ImageFolders, determinism, splits and bad input."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vgg2resnet.cli import app
from vgg2resnet.config import Params, UserError
from vgg2resnet.stages import prepare

from .conftest import ROOT, make_image_folder, repo_params, write_params
from .userdata import stored_images


def _params(tmp_path: Path, source: str, **data) -> Params:
    return repo_params(
        {
            "data": {
                "source": source,
                "raw_dir": str(tmp_path / "raw"),
                "prepared_dir": str(tmp_path / "prepared"),
                **data,
            },
            "paths": {"state_dir": str(tmp_path / "state")},
        }
    )


def test_demo_manifest_is_deterministic_and_stratified(tmp_path: Path):
    params = _params(tmp_path, "demo", demo_image_size=16)
    summary = prepare.run(params)
    assert summary["images"] == 1797 and summary["categories"] == 10
    first = (tmp_path / "prepared" / "manifest.parquet").read_bytes()
    categories = (tmp_path / "prepared" / "categories.json").read_text()
    prepare.run(params)
    assert (tmp_path / "prepared" / "manifest.parquet").read_bytes() == first
    assert (tmp_path / "prepared" / "categories.json").read_text() == categories
    assert categories.index("zero") < categories.index("nine")  # demo order, not alphabetical

    manifest = pd.read_parquet(tmp_path / "prepared" / "manifest.parquet")
    table = pd.crosstab(manifest["category"], manifest["split"])
    assert (table > 0).all().all(), "every category must appear in every split"
    shares = manifest["split"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.25, abs=0.02)
    assert shares["val"] == pytest.approx(0.15, abs=0.02)
    assert manifest["decodes"].all()
    assert set(manifest.columns) >= {"path", "category", "split", "sha256", "width", "height", "mode", "bytes"}


def test_split_depends_on_the_seed(tmp_path: Path):
    a = prepare.run(_params(tmp_path / "a", "demo", demo_image_size=8, seed=1))
    b = prepare.run(_params(tmp_path / "b", "demo", demo_image_size=8, seed=2))
    assert a == b  # same counts...
    ma = pd.read_parquet(tmp_path / "a" / "prepared" / "manifest.parquet")
    mb = pd.read_parquet(tmp_path / "b" / "prepared" / "manifest.parquet")
    assert (ma["split"] != mb["split"]).any()  # ...different members


def test_user_image_folder_with_nested_dirs_and_junk(tmp_path: Path):
    source = make_image_folder(tmp_path / "mine", per_category=5, categories=["cat", "dog"])
    nested = source / "cat" / "indoor" / "sofa"
    nested.mkdir(parents=True)
    (source / "cat" / "0000.png").rename(nested / "0000.png")
    (source / "dog" / ".DS_Store").write_bytes(b"junk")
    (source / "dog" / "notes.txt").write_text("not an image")
    (source / "README").write_text("about the data")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))

    summary = prepare.run(_params(tmp_path, str(source)))

    assert summary["images"] == 10
    assert summary["skipped_hidden"] == 1 and summary["skipped_non_image"] == 2
    manifest = pd.read_parquet(tmp_path / "prepared" / "manifest.parquet")
    assert "cat/indoor/sofa/0000.png" in set(manifest["path"])
    assert (
        stored_images(tmp_path / "raw")["cat/indoor/sofa/0000.png"]
        == (source / "cat/indoor/sofa/0000.png").read_bytes()
    )
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # source untouched


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "data folder not found"),
        ("empty_category", "has no images"),
        ("undecodable", "do not decode"),
        ("case_clash", "differ only in case"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path: Path, case: str, message: str):
    source = tmp_path / "mine"
    if case != "missing":
        make_image_folder(source, per_category=4, categories=["cat", "dog"])
    if case == "empty_category":
        (source / "bird").mkdir()
        (source / "bird" / "notes.txt").write_text("no images here")
    elif case == "undecodable":
        (source / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    elif case == "case_clash":
        make_image_folder(source, per_category=4, categories=["Cat"])
    with pytest.raises(UserError, match=message) as info:
        prepare.run(_params(tmp_path, str(source)))
    if case == "undecodable":  # named by its path in the user's folder, with the ways out
        assert str(source / "dog" / "broken.jpg") in str(info.value)
        assert "on_undecodable" in str(info.value) and "'skip'" in str(info.value)
        assert not (tmp_path / "raw").exists()


def test_skip_leaves_every_undecodable_file_out_and_lists_it_by_its_source_path(tmp_path: Path):
    source = make_image_folder(tmp_path / "mine", per_category=5, categories=["cat", "dog"])
    good = (source / "cat" / sorted(p.name for p in (source / "cat").iterdir())[0]).read_bytes()
    broken = {
        source / "dog" / "broken.jpg": b"this is not a jpeg",
        source / "dog" / "empty.png": b"",
        # every cut of a valid PNG that loses pixel data
        **{source / "cat" / "cut" / f"{n:04d}.png": good[:n] for n in range(1, len(good) // 2)},
    }
    for path, payload in broken.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    summary = prepare.run(_params(tmp_path, str(source), on_undecodable="skip"))
    assert summary["images"] == 10 and summary["skipped_undecodable"] == len(broken)
    skipped = json.loads((tmp_path / "prepared" / "skipped.json").read_text())
    assert {entry["path"] for entry in skipped} == {str(p) for p in broken}
    assert all(entry["error"] for entry in skipped)
    manifest = pd.read_parquet(tmp_path / "prepared" / "manifest.parquet")
    assert manifest["decodes"].all() and len(manifest) == 10
    assert sorted(stored_images(tmp_path / "raw")) == sorted(manifest["path"])


def test_cli_exits_2_with_the_message_not_a_traceback(tmp_path: Path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    write_params(tmp_path, {"data": {"source": str(tmp_path / "missing")}})
    result = CliRunner().invoke(app, ["prepare", "--params", str(params)])
    assert result.exit_code == 2
    assert "data folder not found" in result.output
    assert "Traceback" not in result.output

    params.write_text("data:\n  sourse: demo\n")
    result = CliRunner().invoke(app, ["prepare", "--params", str(params)])
    assert result.exit_code == 2
    assert "unknown key 'data.sourse'" in result.output
