"""What a user brings: a messy ImageFolder of JPEGs and a plain torchvision VGG-16 state_dict that
was made outside this project (its head fitted here with torch alone, not the project's training).

The categories are colours, so a VGG-16 with random convolutions and a fitted last layer already
classifies them almost perfectly: a real teacher in a few seconds of CPU.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision import models
from torchvision.transforms import v2

from vgg2resnet.data.shards import Packer

# Folder listing order (alphabetical) is blue, green, red, yellow; the teacher's own order differs.
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}
TEACHER_ORDER = ["yellow", "red", "blue", "green"]
IMAGE_SIZE = 32


def colour_image(rgb: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """A noisy patch of one colour, 36-64 px a side, with a darker rectangle somewhere on it."""
    height, width = rng.integers(36, 65, size=2)
    pixels = np.asarray(rgb, dtype=np.float32) + rng.normal(0, 18, (height, width, 3))
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[top : top + height // 3, left : left + width // 3] *= 0.6
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_user_folder(root: Path, per_category: int = 24, seed: int = 0) -> Path:
    """JPEGs in nested sub-folders per category, plus what real folders hold: a text file, a
    .DS_Store, an empty .jpg and a truncated .jpg."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        for index in range(per_category):
            folder = root / name / f"shoot-{index % 3}" / ("raw" if index % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            colour_image(rgb, rng).save(folder / f"{name}-{index:03d}.jpg", quality=92)
    (root / "notes.txt").write_text("photos from the spring campaign\n")
    (root / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (root / "green" / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    colour_image(COLOURS["blue"], rng).save(buffer, format="JPEG", quality=92)
    (root / "blue" / "shoot-0" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return root


BROKEN_FILES = {"green/empty.jpg", "blue/shoot-0/truncated.jpg"}


def content_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """VGG-16's penultimate activations (the input of classifier[6])."""
    with torch.no_grad():
        return model.classifier[:6](torch.flatten(model.avgpool(model.features(images)), 1))


def make_colour_teacher(categories: list[str], per_category: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    """A plain torchvision vgg16 state_dict whose outputs are `categories` in that order: random
    convolutions, the last layer fitted by logistic regression on freshly drawn images."""
    torch.manual_seed(seed)
    model = models.vgg16(weights=None, num_classes=len(categories)).eval()
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(IMAGE_SIZE, antialias=True),
            v2.CenterCrop(IMAGE_SIZE),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(categories):
        for _ in range(per_category):
            images.append(transform(colour_image(COLOURS[name], rng)))
            labels.append(label)
    features = _features(model, torch.stack(images))
    scale = features.std().clamp_min(1e-6)
    head = torch.nn.Linear(features.shape[1], len(categories))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    target = torch.tensor(labels)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features / scale), target).backward()
        optimizer.step()
    with torch.no_grad():
        model.classifier[6].weight.copy_(head.weight / scale)
        model.classifier[6].bias.copy_(head.bias)
    return model.state_dict()


def shuffled(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The same tensors with their elements permuted: a checkpoint that loads but knows nothing."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v.flatten()[torch.randperm(v.numel(), generator=generator)].reshape(v.shape) for k, v in state.items()}


def edit_keeping_times(path: Path) -> bytes:
    """Flip the last byte in place and put the access and modification times back: only the
    size-preserving write's ctime tells it happened."""
    stat = path.stat()
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF
    path.write_bytes(bytes(payload))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return bytes(payload)


def stored_images(raw_dir: Path) -> dict[str, bytes]:
    """Every image data/raw holds, by its path in the user's folder, read with `tarfile` (not the
    project's reader) and listed by data/raw's index: what `tar xf` would give back."""
    index = pd.read_parquet(Path(raw_dir) / "index.parquet")
    members: dict[tuple[str, str], bytes] = {}
    for shard in Path(raw_dir).glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                payload = tar.extractfile(member).read()
                members[shard.name, hashlib.sha256(payload).hexdigest()] = payload
    return {row.path: members[row.shard, row.sha256] for row in index.itertuples()}


def packed(root: Path, relatives: list[str], into: Path) -> pd.DataFrame:
    """The files at `relatives` under root packed into shards in `into` (a data/raw), and their
    manifest rows: path, category (the first folder), sha256, bytes, shard and offset."""
    into.mkdir(parents=True, exist_ok=True)
    packer = Packer(into, 1 << 20)
    rows = []
    for relative in relatives:
        payload = (Path(root) / relative).read_bytes()
        sha = hashlib.sha256(payload).hexdigest()
        packer.add(relative, payload, sha)
        rows.append({"path": relative, "category": relative.split("/")[0], "sha256": sha, "bytes": len(payload)})
    frame = pd.DataFrame(rows)
    return frame.join(packer.finish(frame))
