"""Symbolic links in a user's folder: followed while they stay inside it, refused (naming the
link) when they leave it, loop, lead back to a folder above them or lead nowhere; checked on
generated trees against os.walk, which lists what a link-following walk reaches."""

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgg2resnet.config import UserError
from vgg2resnet.data.imagefolder import scan_image_folder

# What a link may lead to; each refused unless noted.
INSIDE = ("inside_file", "inside_dir")  # followed
OUTSIDE = ("outside_file", "outside_dir")  # followed only with follow_external_links
BROKEN = ("dangling", "itself", "folder_above")
KINDS = INSIDE + OUTSIDE + BROKEN


def _tree(base: Path) -> tuple[Path, Path]:
    """An ImageFolder with categories a and b (b/sub a nested folder), and a folder beside it."""
    root, outside = base / "photos", base / "elsewhere"
    for folder in (root / "a" / "deep", root / "b" / "sub", outside / "more"):
        folder.mkdir(parents=True)
    for path in (
        root / "a" / "1.png",
        root / "a" / "deep" / "2.png",
        root / "b" / "3.png",
        root / "b" / "sub" / "4.png",
        outside / "5.png",
        outside / "more" / "6.png",
    ):
        path.write_bytes(b"not decoded by a scan")
    return root, outside


def _link(root: Path, outside: Path, where: str, number: int, kind: str) -> Path:
    folder = root / "a" / where if where else root / "a"
    suffix = ".png" if kind.endswith("file") or kind in ("dangling", "itself") else ""
    link = folder / f"link{number}{suffix}"
    target = {
        "inside_file": root / "b" / "3.png",
        "inside_dir": root / "b" / "sub",
        "outside_file": outside / "5.png",
        "outside_dir": outside / "more",
        "dangling": root / "b" / "gone.png",
        "itself": link,
        "folder_above": folder if where else root,
    }[kind]
    link.symlink_to(target)
    return link


def _walked(root: Path) -> dict[str, list[str]]:
    """What a walk that follows every link lists, per category (only safe on a tree without loops)."""
    listed = {}
    for category in sorted(os.listdir(root)):
        files = []
        for folder, _, names in os.walk(root / category, followlinks=True):
            files += [(Path(folder) / name).relative_to(root).as_posix() for name in names]
        listed[category] = sorted(files, key=lambda relative: relative.split("/"))
    return listed


@settings(max_examples=60, deadline=None)
@given(
    links=st.lists(st.tuples(st.sampled_from(["", "deep"]), st.sampled_from(KINDS)), max_size=4),
    follow_external=st.booleans(),
)
def test_links_are_followed_inside_the_folder_and_refused_by_name_otherwise(links, follow_external):
    with tempfile.TemporaryDirectory() as base:
        root, outside = _tree(Path(base))
        made = [(_link(root, outside, where, number, kind), kind) for number, (where, kind) in enumerate(links)]
        refused = [link for link, kind in made if kind in BROKEN or (kind in OUTSIDE and not follow_external)]
        if refused:
            with pytest.raises(UserError) as error:
                scan_image_folder(root, follow_external)
            assert any(str(link) in str(error.value) for link in refused)
        else:
            assert scan_image_folder(root, follow_external).files == _walked(root)


def test_a_category_that_links_out_of_the_folder_is_refused_by_name(tmp_path: Path):
    root, outside = _tree(tmp_path)
    (root / "c").symlink_to(outside)
    with pytest.raises(UserError, match=rf"{root / 'c'}: symbolic link to {outside}, outside .*follow_external_links"):
        scan_image_folder(root, follow_external_links=False)
    assert scan_image_folder(root, follow_external_links=True).files["c"] == ["c/5.png", "c/more/6.png"]
