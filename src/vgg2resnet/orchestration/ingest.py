"""Versioning a new drop of images: copy what is new into data.incoming_dir, `dvc add` it,
commit the .dvc file to git with the version in the message, and push the data.

Content-addressed: a file whose bytes are already there is not copied again, so the same drop
ingested twice makes no new version.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path

from vgg2resnet.data.imagefolder import scan_image_folder
from vgg2resnet.orchestration.pipeline import git

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_new_images(drop: Path, target: Path, follow_external_links: bool) -> int:
    """Copy images of the drop (ImageFolder layout) whose content `target` lacks; return the count."""
    scan = scan_image_folder(drop, follow_external_links)
    known = {_sha256(p) for p in target.rglob("*") if p.is_file()} if target.is_dir() else set()
    copied = 0
    for category in scan.files:
        for image in scan.paths(category):
            digest = _sha256(image)
            if digest in known:
                continue
            destination = target / category / f"{digest[:16]}{image.suffix.lower()}"
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, destination)
            known.add(digest)
            copied += 1
    return copied


def ingest(drop: Path, root: Path, incoming_dir: Path, follow_external_links: bool, push: bool = True) -> dict:
    """Version what is new in `drop`; return the data version and whether it is a new one."""
    from dvc.repo import Repo

    drop, root = Path(drop).resolve(), Path(root).resolve()
    target = root / incoming_dir
    copied = copy_new_images(drop, target, follow_external_links)
    dvc_file = Path(f"{incoming_dir}.dvc")
    new_version = copied > 0 or not (root / dvc_file).is_file()
    if new_version:
        with contextlib.chdir(root), Repo(str(root)) as repo:
            repo.add(str(incoming_dir))
            version = _recorded_version(root, dvc_file)
            git(root, "add", str(dvc_file), str(dvc_file.parent / ".gitignore"))
            git(root, "commit", "-q", "-m", f"data: ingest {drop.name} ({copied} new images) -> {version}")
            if push:
                repo.push(targets=[str(dvc_file)])
    version = _recorded_version(root, dvc_file)
    log.info("ingest %s: %d new image(s); data version %s", drop, copied, version)
    return {"version": version, "new_images": copied, "new_version": new_version}


def _recorded_version(root: Path, dvc_file: Path) -> str:
    """The md5 that the .dvc file records: the data version of the incoming folder."""
    import yaml

    return yaml.safe_load((root / dvc_file).read_text())["outs"][0]["md5"]
