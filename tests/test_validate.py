"""The validate stage: a real Great Expectations run over tiny manifests, one per failure mode."""

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgg2resnet.config import Params, UserError
from vgg2resnet.data.manifest import SPLITS
from vgg2resnet.data.policy import InputPolicy
from vgg2resnet.stages import prepare, validate
from vgg2resnet.validation.frames import _near_duplicate_across_splits
from vgg2resnet.validation.suite import DEFAULT_SEVERITY

from .conftest import make_image_folder, merge, repo_params
from .imagefiles import in_mode, policy_cases

CATEGORIES = ["zero", "one", "two", "three"]


def _params(tmp_path: Path, source: Path, categories=CATEGORIES, **validation) -> Params:
    return repo_params(
        {
            "data": {
                "source": str(source),
                "raw_dir": str(tmp_path / "raw"),
                "prepared_dir": str(tmp_path / "prepared"),
                "categories": categories,
                "on_undecodable": "record",
            },
            "paths": {"state_dir": str(tmp_path / "state")},
            "validation": {"report_dir": str(tmp_path / "reports"), "min_images_per_category": 5, **validation},
        }
    )


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", per_category=16, categories=CATEGORIES)


def _prepare_and_validate(params: Params, edit=None) -> dict:
    """prepare, then `edit(manifest)` in place if given (a state prepare itself never writes), then validate."""
    prepare.run(params)
    if edit is not None:
        path = params.data.prepared_dir / "manifest.parquet"
        manifest = pd.read_parquet(path)
        edit(manifest)
        manifest.to_parquet(path, index=False)
    return validate.run(params)


def _failure(params: Params, check: str, edit=None) -> str:
    with pytest.raises(UserError) as info:
        _prepare_and_validate(params, edit)
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


def test_extra_category(tmp_path: Path, images: Path):
    make_image_folder(images, per_category=16, categories=["zero", "one", "two", "three", "four"])
    message = _failure(_params(tmp_path, images), "categories")
    assert "extra ['four']" in message


def test_category_renamed_by_case(tmp_path: Path, images: Path):
    (images / "two").rename(images / "Two")
    message = _failure(_params(tmp_path, images), "categories")
    assert "missing ['two']" in message and "extra ['Two']" in message


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

    strict = params.model_copy(
        update={"validation": params.validation.model_copy(update={"severity": {"skipped_undecodable": "fail"}})}
    )
    assert str(truncated) in _failure(strict, "skipped_undecodable")


def test_nothing_skipped_is_no_warning(tmp_path: Path, images: Path):
    params = _params(tmp_path, images)
    params = params.model_copy(update={"data": params.data.model_copy(update={"on_undecodable": "skip"})})
    _prepare_and_validate(params)
    result = json.loads((tmp_path / "reports" / "result.json").read_text())
    [check] = [c for c in result["checks"] if c["check"] == "skipped_undecodable"]
    assert check["success"] and check["offending_count"] == 0


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


def _warning(params: Params, check: str, edit=None) -> dict:
    """The check reports a warning and validation still passes."""
    summary = _prepare_and_validate(params, edit)
    assert summary["passed"] and summary["warnings"] >= 1
    result = json.loads((params.validation.report_dir / "result.json").read_text())
    [problem] = [p for p in result["summary"]["problems"] if p["check"] == check]
    assert problem["severity"] == "warn" and problem["offending"]
    return problem


def _strict(params: Params, check: str) -> Params:
    return params.model_copy(update={"validation": params.validation.model_copy(update={"severity": {check: "fail"}})})


def test_images_outside_the_side_limits_fail_dimensions(tmp_path: Path, images: Path):
    assert "dimensions" in _failure(_params(tmp_path, images, min_side=40), "dimensions")  # the images are 32 px
    shutil.rmtree(tmp_path / "reports")
    _failure(_params(tmp_path, images, max_side=16), "dimensions")


@settings(max_examples=3, deadline=None)
@given(cases=st.lists(policy_cases(), min_size=1, max_size=8))
def test_validation_flags_exactly_the_images_the_input_policy_refuses(cases):
    """The "dimensions", "aspect_ratio" and "modes" checks together flag the files whose facts
    the policy (what the service applies to uploads) refuses, and only those."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp_path = Path(scratch)
        images = make_image_folder(tmp_path / "images", per_category=16, categories=CATEGORIES)
        refused = set()
        params = _params(tmp_path, images)
        policy = InputPolicy.of(params.validation)
        for number, (mode, width, height) in enumerate(cases):
            path = images / "zero" / f"policy{number}.{'jpg' if mode == 'CMYK' else 'png'}"
            path.write_bytes(in_mode(mode, width, height, seed=number))
            if policy.refusals(width, height, mode):
                refused.add(str(path))
        try:
            _prepare_and_validate(params)
        except UserError:
            pass
        problems = json.loads((params.validation.report_dir / "result.json").read_text())["summary"]["problems"]
        flagged = {
            path for p in problems if p["check"] in ("dimensions", "aspect_ratio", "modes") for path in p["offending"]
        }
        assert flagged == refused


def test_near_duplicates_across_splits_warn_and_can_be_made_to_fail(tmp_path: Path, images: Path):
    planted: list[str] = []

    def near_duplicate_pair(manifest: pd.DataFrame) -> None:
        """A val image whose dhash is one bit away from a train image's, its bytes still its own."""
        train = manifest.index[manifest["split"] == "train"][0]
        val = manifest.index[manifest["split"] == "val"][0]
        manifest.loc[val, "dhash"] = f"{int(manifest.loc[train, 'dhash'], 16) ^ 1:016x}"
        planted[:] = [str(images / manifest.loc[i, "path"]) for i in (train, val)]

    params = _params(tmp_path, images, near_duplicate_max_distance=1)
    problem = _warning(params, "near_duplicates", near_duplicate_pair)
    assert set(planted) <= set(problem["offending"])
    shutil.rmtree(tmp_path / "reports")
    _failure(_strict(params, "near_duplicates"), "near_duplicates", near_duplicate_pair)


def _brute_force_near_duplicates(hashes: list[int], splits: list[str], max_distance: int) -> list[bool]:
    return [
        any(
            bin(h ^ other).count("1") <= max_distance and s != other_split for other, other_split in zip(hashes, splits)
        )
        for h, s in zip(hashes, splits)
    ]


@settings(max_examples=150)
@given(data=st.data(), max_distance=st.integers(0, 64))
def test_the_near_duplicate_check_flags_exactly_what_comparing_every_pair_flags(data, max_distance: int):
    """Random hashes with planted near-duplicates: each planted copy differs from an earlier hash
    in 0..max_distance + 1 bits, and may land in the same split or another."""
    hashes = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8))
    for _ in range(data.draw(st.integers(0, 30))):
        bits = data.draw(st.sets(st.integers(0, 63), max_size=min(max_distance + 1, 64)))
        hashes.append(data.draw(st.sampled_from(hashes)) ^ sum(1 << bit for bit in bits))
    splits = data.draw(st.lists(st.sampled_from(SPLITS), min_size=len(hashes), max_size=len(hashes)))
    frame = pd.DataFrame({"dhash": [f"{h:016x}" for h in hashes], "split": splits})
    flags = _near_duplicate_across_splits(frame, max_distance)
    assert flags.tolist() == _brute_force_near_duplicates(hashes, splits, max_distance)


def _duplicate_within_train(manifest: pd.DataFrame) -> None:
    first, second = manifest.index[(manifest["split"] == "train") & (manifest["category"] == "one")][:2]
    manifest.loc[second, "sha256"] = manifest.loc[first, "sha256"]


def test_duplicates_within_a_split_warn_and_can_be_made_to_fail(tmp_path: Path, images: Path):
    params = _params(tmp_path, images)
    problem = _warning(params, "within_split_duplicates", _duplicate_within_train)
    assert len(problem["offending"]) == 2
    shutil.rmtree(tmp_path / "reports")
    _failure(_strict(params, "within_split_duplicates"), "within_split_duplicates", _duplicate_within_train)


# Every expectation the suite builds, keyed (check, expectation type, the column it reads), and a data
# set that breaks it alone: a function of the image folder that plants files or returns settings
# before prepare, or a manifest edit after it (a state prepare never writes). Each gives what the
# failure must name: a file it planted or edited, a category, or a phrase of the message.


def _plant(images: Path, name: str, payload: bytes) -> str:
    path = images / "zero" / name
    path.write_bytes(payload)
    return str(path)


def _policy() -> InputPolicy:
    return InputPolicy.of(repo_params().validation)


def _truncated(images: Path) -> str:
    return _plant(images, "truncated.png", in_mode("RGB", 32, 32)[:100])


def _row(manifest: pd.DataFrame, split: str, category: str = "zero") -> int:
    return manifest.index[(manifest["split"] == split) & (manifest["category"] == category)][0]


def _edit(change):
    """A case that edits the manifest prepare wrote; change(manifest) returns the row it edited,
    which the failure must name by its file."""

    def case(images: Path):
        named: list[str] = []

        def edit(manifest: pd.DataFrame) -> None:
            paths = manifest["path"].copy()
            named.append(str(images / paths[change(manifest)]))

        return {}, edit, named

    return case


def _null_path(manifest: pd.DataFrame) -> int:
    manifest.loc[0, "path"] = None
    return 0


def _null_category(manifest: pd.DataFrame) -> int:
    manifest.loc[0, "category"] = None
    return 0


def _test_copy_of_train(manifest: pd.DataFrame) -> int:
    test = _row(manifest, "test")
    manifest.loc[test, "sha256"] = manifest.loc[_row(manifest, "train"), "sha256"]  # one file's bytes, filed twice
    return test


def _train_copy_of_train(manifest: pd.DataFrame) -> int:
    first, second = manifest.index[(manifest["split"] == "train") & (manifest["category"] == "one")][:2]
    manifest.loc[second, "sha256"] = manifest.loc[first, "sha256"]
    return second


def _val_looks_like_train(manifest: pd.DataFrame) -> int:
    val = _row(manifest, "val")  # its bytes its own, its dhash a train image's (distance 0)
    manifest.loc[val, "dhash"] = manifest.loc[_row(manifest, "train"), "dhash"]
    return val


def _moved_to_train(split: str):
    def case(images: Path):
        def edit(manifest: pd.DataFrame) -> None:
            manifest.loc[(manifest["category"] == "zero") & (manifest["split"] == split), "split"] = "train"

        return {}, edit, ["zero"]

    return case


def _zeros(images: Path, kept: int) -> None:
    for extra in sorted((images / "zero").iterdir())[kept:]:
        extra.unlink()


def _few_zeros(images: Path):
    _zeros(images, 6)  # 3 in train, under min_images_per_category (5); 16 / 6 is within max_imbalance_ratio (3)
    return {}, None, ["zero"]


def _fewer_zeros(images: Path):
    _zeros(images, 10)  # 16 / 10 = 1.6 times the smallest category
    return {"validation": {"max_imbalance_ratio": 1.2}}, None, ["one", "two", "three"]


VIOLATIONS = {
    # A row without a path has no file to name: the failure counts it (offending_count below).
    ("not_null", "expect_column_values_to_not_be_null", "path"): lambda images: (
        {},
        lambda manifest: _null_path(manifest) and None,
        [],
    ),
    ("not_null", "expect_column_values_to_not_be_null", "category"): _edit(_null_category),
    ("categories", "expect_column_distinct_values_to_equal_set", "category"): lambda images: (
        {"data": {"categories": [*CATEGORIES, "four"]}},
        None,
        ["missing ['four']"],
    ),
    ("decodes", "expect_column_values_to_be_in_set", "decodes"): lambda images: ({}, None, [_truncated(images)]),
    ("dimensions", "expect_column_values_to_be_between", "width"): lambda images: (
        {},
        None,
        [_plant(images, "narrow.png", in_mode("RGB", _policy().min_side - 1, 2 * _policy().min_side))],
    ),
    ("dimensions", "expect_column_values_to_be_between", "height"): lambda images: (
        {},
        None,
        [_plant(images, "low.png", in_mode("RGB", 2 * _policy().min_side, _policy().min_side - 1))],
    ),
    ("aspect_ratio", "expect_column_values_to_be_between", "aspect_ratio"): lambda images: (
        {},
        None,
        [_plant(images, "long.png", in_mode("RGB", 12, int(12 * _policy().max_aspect_ratio) + 2))],
    ),
    ("modes", "expect_column_values_to_be_in_set", "mode"): lambda images: (
        {},
        None,
        [_plant(images, "print.jpg", in_mode("CMYK", 32, 32))],
    ),  # CMYK is not among the allowed modes
    ("leakage", "expect_column_values_to_be_in_set", "duplicate_across_splits"): _edit(_test_copy_of_train),
    ("within_split_duplicates", "expect_column_values_to_be_in_set", "duplicate_within_split"): _edit(
        _train_copy_of_train
    ),
    ("near_duplicates", "expect_column_values_to_be_in_set", "near_duplicate_across_splits"): _edit(
        _val_looks_like_train
    ),
    ("min_train_images", "expect_column_values_to_be_between", "train"): _few_zeros,
    ("val_and_test_coverage", "expect_column_values_to_be_between", "val"): _moved_to_train("val"),
    ("val_and_test_coverage", "expect_column_values_to_be_between", "test"): _moved_to_train("test"),
    ("imbalance", "expect_column_values_to_be_between", "ratio_to_smallest"): _fewer_zeros,
    ("skipped_undecodable", "expect_column_values_to_be_in_set", "decodes"): lambda images: (
        {"data": {"on_undecodable": "skip"}},
        None,
        [_truncated(images)],
    ),
}


@pytest.fixture
def clean_images(tmp_path: Path) -> Path:
    """16 images of noise per category: unlike the digits (whose upscaled 8x8 pictures share
    difference hashes across splits), nothing in them is a near-duplicate, so no check warns."""
    root = tmp_path / "clean"
    for number, category in enumerate(CATEGORIES):
        (root / category).mkdir(parents=True)
        for index in range(16):
            (root / category / f"{index:02d}.png").write_bytes(in_mode("RGB", 32, 32, seed=100 * number + index))
    return root


@pytest.mark.parametrize("expectation", [pytest.param(key, id="-".join(key[::2])) for key in VIOLATIONS])
def test_each_expectation_fails_alone_on_data_that_breaks_it(tmp_path: Path, clean_images: Path, expectation):
    """A real GX run over data that breaks one expectation: that one fails, naming what broke it,
    every other passes, and the check stops the stage exactly when its severity is 'fail'. Every
    run also lists what the suite ran: an expectation without a case here fails every case."""
    check, kind, _ = expectation
    overrides, edit, named = VIOLATIONS[expectation](clean_images)
    params = Params.model_validate(merge(_params(tmp_path, clean_images).model_dump(mode="json"), overrides))
    try:
        _prepare_and_validate(params, edit)
        stopped = None
    except UserError as exc:
        stopped = str(exc)
    checks = json.loads((params.validation.report_dir / "result.json").read_text())["checks"]
    assert Counter((c["check"], c["expectation"]) for c in checks) == Counter(key[:2] for key in VIOLATIONS)
    [failed] = [c for c in checks if not c["success"]]
    assert (failed["check"], failed["expectation"]) == (check, kind)
    assert failed["severity"] == DEFAULT_SEVERITY[check]
    assert (stopped is not None) == (DEFAULT_SEVERITY[check] == "fail")
    if stopped is not None:
        assert f"FAIL {check}" in stopped
    said = " ".join([*failed["offending"], stopped or ""])
    assert all(name in said for name in named), (named, failed)
    if named == []:  # only a row without a path has nothing to name: it is counted
        assert expectation[2] == "path" and failed["offending_count"] == 1, failed
