"""Reading a user's ImageFolder tree: one folder per category, images anywhere below it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vgg2resnet.config import DataParams, UserError
from vgg2resnet.data.images import SUFFIXES


@dataclass
class ScanResult:
    files: dict[str, list[Path]] = field(default_factory=dict)  # category -> files, sorted
    skipped_hidden: int = 0
    skipped_non_image: int = 0


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


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
    result = ScanResult()
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
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            if _is_hidden(path.relative_to(root)):
                result.skipped_hidden += 1
            elif path.suffix.lower() not in SUFFIXES:
                result.skipped_non_image += 1
            else:
                images.append(path)
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

