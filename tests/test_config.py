from pathlib import Path

import pytest

from vgg2resnet.config import Params, load_params
from vgg2resnet.errors import UserError

from .conftest import ROOT


def test_repository_params_load_and_match_defaults_where_unset():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "demo"
    assert params.teacher.arch == "vgg16_bn"
    assert 0 < params.distill.alpha <= 1


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("distill:\n  temprature: 4\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert "distill.temprature" in message
    assert "temperature" in message  # the allowed keys are listed
    assert str(path) in message


def test_wrong_type_and_out_of_range_values_are_named(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("teacher:\n  epochs: many\ndistill:\n  alpha: 1.5\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    assert "teacher.epochs" in str(info.value)
    assert "distill.alpha" in str(info.value)


def test_closed_choices_list_the_allowed_values(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("teacher:\n  optimizer: rmsprop\n")
    with pytest.raises(UserError, match="'sgd'.*'adamw'"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_split_must_leave_training_data():
    with pytest.raises(ValueError, match="val \\+ test"):
        Params.model_validate({"data": {"split": {"val": 0.45, "test": 0.45}}})
