"""The one image decoder that prepare, training, the drift reference and the service share,
checked against the formats' specifications (tests/imagefiles.py), not against its own output."""

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vgg2resnet.data.datasets import ImageDataset
from vgg2resnet.data.formats import SUFFIXES
from vgg2resnet.data.imagefolder import scan_image_folder
from vgg2resnet.data.images import UndecodableImage, decode, pixels
from vgg2resnet.data.manifest import image_facts
from vgg2resnet.data.transforms import eval_transform

from .conftest import ROOT
from .imagefiles import (
    FILE_TYPES,
    encoded,
    noise,
    shortest_decodable,
    sideways_photo,
    with_orientation,
)
from .userdata import packed


@pytest.mark.parametrize("fmt", list(FILE_TYPES))
def test_each_allowed_format_decodes_to_its_pixels(fmt: str):
    image = noise()
    lossless = {"WEBP": {"lossless": True}}.get(fmt, {})
    decoded = decode(encoded(image, fmt, **lossless))
    assert decoded.mode == "RGB" and decoded.size == image.size
    if fmt != "JPEG":
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO", "PPM", "TGA"])
def test_formats_outside_the_allow_list_are_refused_whatever_their_name(fmt: str):
    with pytest.raises(UndecodableImage, match="not a PNG, JPEG, WebP or BMP image"):
        decode(encoded(noise(), fmt))


_NAMES = st.sampled_from(["a", "B", "a-b", "a.b", ".hid", "x.JPG", "y.png", "z.txt", "w.webp", "v.jpeg.bak"])


@settings(max_examples=60, deadline=None)
@given(tree=st.lists(st.lists(_NAMES, min_size=1, max_size=4), min_size=1, max_size=12))
def test_the_scan_lists_what_pathlib_finds_in_a_generated_tree(tree: list[list[str]]):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for parts in tree:
            path = root / "cat" / Path(*parts)
            if any(p.is_file() for p in [path, *path.parents]):
                continue  # a file already has this name; the tree cannot hold both
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_dir():
                path.write_bytes(b"")
        (root / "cat" / "keep.png").write_bytes(b"")  # a category with no image is refused
        files = sorted(p for p in (root / "cat").rglob("*") if p.is_file())
        hidden = [p for p in files if any(part.startswith(".") for part in p.relative_to(root).parts)]
        images = [p for p in files if p not in hidden and p.suffix.lower() in SUFFIXES]
        scan = scan_image_folder(root)
        assert scan.paths("cat") == images
        assert scan.files["cat"] == [p.relative_to(root).as_posix() for p in images]
        assert (scan.skipped_hidden, scan.skipped_non_image) == (len(hidden), len(files) - len(hidden) - len(images))


def test_readme_and_the_image_folder_name_the_formats_the_decoder_takes(tmp_path: Path):
    assert "PNG, JPEG, WebP and BMP" in (ROOT / "README.md").read_text()
    for suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif"):
        (tmp_path / "cat" / f"a{suffix}").parent.mkdir(exist_ok=True)
        (tmp_path / "cat" / f"a{suffix}").write_bytes(b"")
    listed = {p.suffix for p in scan_image_folder(tmp_path).paths("cat")}
    assert listed == set(SUFFIXES) == {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@pytest.mark.parametrize("fmt", list(FILE_TYPES))
def test_a_file_cut_at_any_byte_decodes_only_when_every_pixel_is_in(fmt: str):
    data = encoded(noise(), fmt)
    end = shortest_decodable(fmt, data)
    assert 0 < end <= len(data)
    for offset in range(end):
        with pytest.raises(UndecodableImage, match=r"truncated|corrupt|empty|not a"):
            decode(data[:offset])
    for offset in range(end, len(data) + 1):
        assert decode(data[:offset]).size == noise().size


@settings(max_examples=300)
@given(
    fmt=st.sampled_from(list(FILE_TYPES)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_flipped_bytes_give_an_image_or_undecodable_never_another_error(fmt: str, flips):
    data = bytearray(encoded(noise(), fmt))
    for position, value in flips:
        data[position % len(data)] = value
    try:
        image = decode(bytes(data), max_pixels=10**6)
    except UndecodableImage as exc:
        assert str(exc)
    else:
        assert image.mode == "RGB" and image.width * image.height <= 10**6


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    header_only = encoded(Image.new("RGB", (4000, 4000)), "PNG")[:100]  # no pixel data: decoding would fail
    with pytest.raises(UndecodableImage, match="4000x4000 = 16000000 pixels; the limit is 1000000"):
        decode(header_only, max_pixels=10**6)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright(fmt: str, orientation: int):
    upright = np.asarray(noise(width=16, height=12))
    data = with_orientation(upright, orientation, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(np.asarray(decode(data)), upright)


def test_an_exif_rotated_jpeg_is_the_same_tensor_in_training_as_its_upright_twin(tmp_path: Path):
    """A phone photo stored sideways with orientation 6, and the upright picture it shows."""
    rotated, stored, shown = sideways_photo()
    assert stored.shape[:2] == (40, 24)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "rotated.jpg").write_bytes(rotated)
    Image.fromarray(shown).save(tmp_path / "cat" / "upright.png")
    rows = packed(tmp_path, ["cat/rotated.jpg", "cat/upright.png"], tmp_path / "raw")
    dataset = ImageDataset(rows, tmp_path / "raw", ["cat"], eval_transform(32, (0.5,) * 3, (0.25,) * 3))
    assert torch.equal(dataset[0][0], dataset[1][0])
    facts = image_facts(rotated, max_pixels=10**6)
    assert (facts.width, facts.height) == (40, 24) and facts.decodes


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    mode=st.sampled_from(["RGB", "L", "CMYK"]),
    fmt=st.sampled_from(list(FILE_TYPES)),
    orientation=st.integers(0, 8),
    quality=st.integers(20, 100),
    subsampling=st.integers(0, 2),
    progressive=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_training_pixels_are_the_decoders_pixels(
    tmp_path_factory, width, height, mode, fmt, orientation, quality, subsampling, progressive, seed
):
    """`pixels` (torchvision's JPEG decoder, for training) equals `decode` (Pillow, for the
    service) on every format, mode, JPEG encoding and EXIF orientation (0: no EXIF at all)."""
    image = noise(width, height, seed)
    if mode == "L" or (mode == "CMYK" and fmt == "JPEG"):  # CMYK: only JPEG stores it
        image = image.convert(mode)
    options = {"quality": quality, "subsampling": subsampling, "progressive": progressive} if fmt == "JPEG" else {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if fmt == "BMP":
        options.pop("exif", None)  # BMP has no EXIF
    path = tmp_path_factory.mktemp("pixels") / f"image.{FILE_TYPES[fmt][0]}"
    try:
        path.write_bytes(encoded(image, fmt, **options))
    except (OSError, ValueError):  # a combination the encoder refuses (e.g. a 1 px progressive JPEG)
        return
    expected = torch.from_numpy(np.array(decode(path))).permute(2, 0, 1)
    assert torch.equal(pixels(path), expected)


def test_a_dataset_keeps_no_decoded_image_after_returning_it(tmp_path: Path):
    """Memory must not grow with the data set: reading every item leaves the object as it was."""
    (tmp_path / "cat").mkdir()
    for i in range(6):
        noise(64, 48, seed=i).save(tmp_path / "cat" / f"{i}.jpg")
    rows = packed(tmp_path, [f"cat/{i}.jpg" for i in range(6)], tmp_path / "raw")
    dataset = ImageDataset(rows, tmp_path / "raw", ["cat"], eval_transform(32, (0.5,) * 3, (0.25,) * 3))
    before = pickle.dumps(dataset)
    items = [dataset[i] for i in range(len(dataset))]
    assert pickle.dumps(dataset) == before
    assert all(item[0].shape == (3, 32, 32) for item in items)
