"""The input policy that validation and the service share: what it refuses, with the setting
named, and how each admitted mode becomes RGB, checked on generated images of every mode."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from PIL import Image

from vgg2resnet.data.images import UndecodableImage, decode
from vgg2resnet.data.manifest import image_facts
from vgg2resnet.data.policy import InputPolicy

from .conftest import repo_params
from .imagefiles import MODES, encoded, in_mode, policy_cases

POLICY = InputPolicy.of(repo_params({}).validation)  # the repository's defaults


@settings(max_examples=200, deadline=None)
@given(case=policy_cases())
def test_the_decoder_refuses_by_policy_exactly_the_files_whose_recorded_facts_break_it(case):
    mode, width, height = case
    payload = in_mode(mode, width, height)
    facts = image_facts(payload, 10**8)  # what prepare records and validation judges
    refusals = POLICY.refusals(facts.width, facts.height, facts.mode)
    if refusals:
        with pytest.raises(UndecodableImage) as error:
            decode(payload, policy=POLICY)
        assert str(error.value) == "; ".join(refusals)
    else:
        assert decode(payload, policy=POLICY).size == (width, height)


def test_the_defaults_refuse_the_inputs_training_never_sees():
    for payload, setting in (
        (in_mode("RGB", 1, 1), "validation.min_side"),
        (in_mode("RGB", 400, 20), "validation.max_aspect_ratio"),
        (in_mode("I;16", 32, 32), "validation.allowed_modes"),
        (in_mode("CMYK", 32, 32), "validation.allowed_modes"),
    ):
        with pytest.raises(UndecodableImage, match=setting):
            decode(payload, policy=POLICY)


def test_16_bit_greyscale_keeps_its_high_byte_instead_of_clipping():
    values = np.random.default_rng(0).integers(0, 65536, (24, 40), dtype=np.uint16)
    decoded = np.asarray(decode(encoded(Image.fromarray(values), "PNG")))
    assert decoded.shape == (24, 40, 3)
    for channel in range(3):
        assert np.array_equal(decoded[..., channel], (values // 256).astype(np.uint8))


@pytest.mark.parametrize("mode", [m for m in MODES if m != "I;16"])
def test_every_other_mode_converts_as_pillow_converts_it(mode: str):
    payload = in_mode(mode, 20, 16)
    with Image.open(io.BytesIO(payload)) as image:
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(np.asarray(decode(payload)), expected)
