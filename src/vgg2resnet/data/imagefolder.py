"""Reading a user's ImageFolder tree: one folder per category, images anywhere below it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vgg2resnet.config import DataParams, UserError
from vgg2resnet.data.formats import SUFFIXES


@dataclass
class ScanResult:
    root: Path
    # category -> its images as POSIX paths under root, sorted; strings, since a scan of a
    # million files spends most of its time building Path objects otherwise
    files: dict[str, list[str]] = field(default_factory=dict)
    skipped_hidden: int = 0
    skipped_non_image: int = 0

    def paths(self, category: str) -> list[Path]:
        return [self.root / relative for relative in self.files[category]]


def _regular_files(folder: str, prefix: str) -> Iterator[str]:
    """prefix + the POSIX path under folder of every regular file, symbolic links followed."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield from _regular_files(entry.path, f"{prefix}{entry.name}/")
            elif entry.is_file():
                yield prefix + entry.name


def _parts(relative: str) -> list[str]:
    return relative.split("/")  # the order of pathlib's sorted(), folder by folder


def scan_image_folder(root: Path) -> ScanResult:
    """List images per category; hidden files and non-images are skipped and counted.

    Raises UserError for a missing root, a category with no images, and two
    categories whose names differ only in case (they would collide on
    case-insensitive file systems and are almost always a labelling mistake).
    """
    if not root.is_dir():
        raise UserError(
            f"{root}: data folder not found; set data.source in params.yaml to an existing "
            "ImageFolder directory (one sub-folder per category) or to 'demo'"
        )
    result = ScanResult(root)
    categories = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not categories:
        raise UserError(f"{root}: no category folders found; expected <root>/<category>/<images>")
    by_lower: dict[str, str] = {}
    for folder in categories:
        clash = by_lower.setdefault(folder.name.lower(), folder.name)
        if clash != folder.name:
            raise UserError(
                f"{root}: categories '{clash}' and '{folder.name}' differ only in case; "
                "merge or rename one of the folders"
            )
        images = []
        for relative in sorted(_regular_files(str(folder), f"{folder.name}/"), key=_parts):
            if any(part.startswith(".") for part in _parts(relative)):
                result.skipped_hidden += 1
            elif os.path.splitext(relative)[1].lower() not in SUFFIXES:
                result.skipped_non_image += 1
            else:
                images.append(relative)
        if not images:
            raise UserError(
                f"{folder}: category '{folder.name}' has no images "
                f"({', '.join(sorted(SUFFIXES))}); add images or remove the folder"
            )
        result.files[folder.name] = images
    # Also count hidden/non-image files lying directly in the root.
    for path in root.iterdir():
        if path.is_file():
            if path.name.startswith("."):
                result.skipped_hidden += 1
            else:
                result.skipped_non_image += 1
    return result


def source_root(data: DataParams) -> Path:
    """Where the user's images live, for naming a file by the path its owner knows: the folder
    in data.source, or data.raw_dir for the generated demo."""
    return data.raw_dir if data.source == "demo" else Path(data.source).expanduser()

