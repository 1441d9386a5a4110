"""The validate stage: a real Great Expectations run over tiny manifests, one per failure mode."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vgg2resnet.config import Params, UserError
from vgg2resnet.stages import prepare, validate

from .conftest import make_image_folder, repo_params

CATEGORIES = ["zero", "one", "two", "three"]


def _params(tmp_path: Path, source: Path, categories=CATEGORIES, **validation) -> Params:
    return repo_params({
        "data": {"source": str(source), "raw_dir": str(tmp_path / "raw"),
                 "prepared_dir": str(tmp_path / "prepared"), "categories": categories,
                 "on_undecodable": "record"},
        "validation": {"report_dir": str(tmp_path / "reports"), "min_images_per_category": 5,
                       **validation},
    })


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", per_category=16, categories=CATEGORIES)


def _prepare_and_validate(params: Params) -> dict:
    prepare.run(params)
    return validate.run(params)


def _failure(params: Params, check: str) -> str:
    with pytest.raises(UserError) as info:
        _prepare_and_validate(params)
    message = str(info.value)
    assert f"FAIL {check}" in message
    result = json.loads((params.validation.report_dir / "result.json").read_text())
    assert result["summary"]["passed"] is False
    assert check in {p["check"] for p in result["summary"]["problems"]}
    return message


def test_clean_data_passes_and_writes_data_docs(tmp_path: Path, images: Path):
    summary = _prepare_and_validate(_params(tmp_path, images))
    assert summary["passed"] and summary["failed"] == 0
    assert (tmp_path / "reports" / "docs" / "index.html").is_file()
    result = json.loads((tmp_path / "reports" / "result.json").read_text())
    assert all(c["success"] for c in result["checks"] if c["severity"] == "fail")


def test_missing_category(tmp_path: Path, images: Path):
    message = _failure(_params(tmp_path, images, categories=CATEGORIES + ["four"]), "categories")
    assert "missing ['four']" in message


def test_extra_category(tmp_path: Path, images: Path):
    make_image_folder(images, per_category=16, categories=["zero", "one", "two", "three", "four"])
    message = _failure(_params(tmp_path, images), "categories")
    assert "extra ['four']" in message


def test_category_renamed_by_case(tmp_path: Path, images: Path):
    (images / "two").rename(images / "Two")
    message = _failure(_params(tmp_path, images), "categories")
    assert "missing ['two']" in message and "extra ['Two']" in message


def test_truncated_png(tmp_path: Path, images: Path):
    victim = sorted((images / "one").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert victim.name in _failure(_params(tmp_path, images), "decodes")


def test_zero_byte_file(tmp_path: Path, images: Path):
    (images / "three" / "empty.png").write_bytes(b"")
    assert str(images / "three" / "empty.png") in _failure(_params(tmp_path, images), "decodes")


def test_skipped_files_are_a_warning_naming_each_by_its_path_in_the_users_folder(tmp_path: Path, images: Path):
    truncated = images / "one" / "truncated.png"
    truncated.write_bytes((images / "one" / next(p.name for p in (images / "one").iterdir())).read_bytes()[:60])
    (images / "two" / "empty.png").write_bytes(b"")
    params = _params(tmp_path, images).model_copy(deep=True)
    params = params.model_copy(update={"data": params.data.model_copy(update={"on_undecodable": "skip"})})
    summary = _prepare_and_validate(params)
    assert summary["passed"] and summary["warnings"] >= 1
    result = json.loads((tmp_path / "reports" / "result.json").read_text())
    [problem] = [p for p in result["summary"]["problems"] if p["check"] == "skipped_undecodable"]
    assert problem["severity"] == "warn"
    assert set(problem["offending"]) == {str(truncated), str(images / "two" / "empty.png")}
    assert str(truncated) in problem["message"]

    strict = params.model_copy(update={"validation": params.validation.model_copy(
        update={"severity": {"skipped_undecodable": "fail"}})})
    assert str(truncated) in _failure(strict, "skipped_undecodable")


def test_nothing_skipped_is_no_warning(tmp_path: Path, images: Path):
    params = _params(tmp_path, images)
    params = params.model_copy(update={"data": params.data.model_copy(update={"on_undecodable": "skip"})})
    _prepare_and_validate(params)
    result = json.loads((tmp_path / "reports" / "result.json").read_text())
    [check] = [c for c in result["checks"] if c["check"] == "skipped_undecodable"]
    assert check["success"] and check["offending_count"] == 0


def test_same_image_in_train_and_test(tmp_path: Path, images: Path):
    params = _params(tmp_path, images)
    prepare.run(params)
    path = params.data.prepared_dir / "manifest.parquet"
    manifest = pd.read_parquet(path)
    train = manifest.index[manifest["split"] == "train"][0]
    test = manifest.index[manifest["split"] == "test"][0]
    manifest.loc[test, "sha256"] = manifest.loc[train, "sha256"]  # the bytes of one, filed twice
    manifest.to_parquet(path, index=False)
    with pytest.raises(UserError, match="FAIL leakage") as info:
        validate.run(params)
    assert manifest.loc[test, "path"] in str(info.value)


def test_category_with_too_few_images(tmp_path: Path, images: Path):
    for extra in sorted((images / "zero").iterdir())[6:]:
        extra.unlink()
    message = _failure(_params(tmp_path, images, max_imbalance_ratio=10), "min_train_images")
    assert "zero" in message


def test_warn_only_expectation_reports_but_does_not_stop(tmp_path: Path, images: Path):
    for extra in sorted((images / "zero").iterdir())[10:]:
        extra.unlink()  # 10 vs 16 images: ratio 1.6
    params = _params(tmp_path, images, max_imbalance_ratio=1.2, severity={"imbalance": "warn"})
    summary = _prepare_and_validate(params)
    assert summary["passed"] and summary["warnings"] >= 1
    result = json.loads((tmp_path / "reports" / "result.json").read_text())
    assert any(p["check"] == "imbalance" and p["severity"] == "warn" for p in result["summary"]["problems"])

    shutil.rmtree(tmp_path / "reports")
    _failure(_params(tmp_path, images, max_imbalance_ratio=1.2), "imbalance")


def test_unknown_severity_key_is_refused(tmp_path: Path, images: Path):
    with pytest.raises(UserError, match="unknown check"):
        _prepare_and_validate(_params(tmp_path, images, severity={"imbalanse": "warn"}))
