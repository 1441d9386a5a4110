"""Reading a user's ImageFolder tree: one folder per category, images anywhere below it.

Symbolic links are followed while they stay inside the tree. A link that leads out of it is
refused unless data.follow_external_links says otherwise: its file would be copied into
data/raw, cached and pushed to the remote, which the tree's owner may not expect of a link.
A link loop, a directory link back to a folder above it and a dangling link are errors that
name the link.
"""

from __future__ import annotations

import errno
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


@dataclass(frozen=True)
class _Links:
    """Where the tree's symbolic links may lead."""

    root: str  # the tree's real path
    follow_external: bool

    def target(self, link: str) -> str:
        """The real path `link` leads to, if the policy lets it be followed."""
        try:
            target = os.path.realpath(link, strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(
                    f"{link}: symbolic link loop (it leads back to itself); fix or remove the link"
                ) from None
            raise UserError(
                f"{link}: symbolic link to {os.readlink(link)}, which does not exist; "
                "restore its target or remove the link"
            ) from None
        if not self.follow_external and os.path.commonpath([target, self.root]) != self.root:
            raise UserError(
                f"{link}: symbolic link to {target}, outside the folder it is in ({self.root}); its file would be "
                "copied and pushed to the DVC remote. Copy the files into the folder, or set "
                "data.follow_external_links: true in params.yaml to follow links that leave it"
            )
        return target

    def files(self, folder: str, prefix: str, above: frozenset[str]) -> Iterator[str]:
        """prefix + the POSIX path under folder of every regular file; `above` holds the real
        paths of the folders folder lies in, which a directory link must not lead back to. The
        caller has checked folder itself if it is a link."""
        real = os.path.realpath(folder)
        if real in above:
            raise UserError(
                f"{folder}: symbolic link to {real}, a folder it lies in: the tree would never end; remove the link"
            )
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_symlink():
                    self.target(entry.path)  # refuses a loop, a dangling link and one that leaves the tree
                if entry.is_dir():
                    yield from self.files(entry.path, f"{prefix}{entry.name}/", above | {real})
                elif entry.is_file():
                    yield prefix + entry.name


def scan_order(relative: str) -> list[str]:
    """The sort key of a path under the root: a scan lists files in this order (pathlib's
    sorted(), folder by folder), categories first."""
    return relative.split("/")


def scan_image_folder(root: Path, follow_external_links: bool = False) -> ScanResult:
    """List images per category; hidden files and non-images are skipped and counted, and
    symbolic links checked as the module says.

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
    links = _Links(os.path.realpath(root), follow_external_links)
    visible = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    for path in visible:
        if path.is_symlink():
            links.target(str(path))  # refuses a loop, a dangling link and one that leaves the tree
    categories = [p for p in visible if p.is_dir()]
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
        for relative in sorted(links.files(str(folder), f"{folder.name}/", frozenset({links.root})), key=scan_order):
            if any(part.startswith(".") for part in scan_order(relative)):
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
    in data.source, or data.raw_dir for the generated demo (whose shards hold its images under
    those paths)."""
    return data.raw_dir if data.source == "demo" else Path(data.source).expanduser()
