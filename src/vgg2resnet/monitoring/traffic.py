"""`vgg2resnet simulate-traffic`: real requests from the test split to a running service,
clean or with a named corruption at severity 1-5, so a user can watch the monitor react.
Loopback only."""

from __future__ import annotations

import io
import logging
from urllib.parse import urlparse

import numpy as np
import requests
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.datasets import load_split

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CORRUPTIONS = ("brightness", "contrast", "blur", "noise", "rotation", "occlusion")


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if name == "brightness":
        return ImageEnhance.Brightness(image).enhance(1 - 0.14 * severity)  # 5: x0.3
    if name == "contrast":
        return ImageEnhance.Contrast(image).enhance(1 - 0.17 * severity)
    if name == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=0.4 * severity * image.width / 32))
    if name == "noise":
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + np.random.default_rng(seed).normal(0, 12 * severity, pixels.shape)
        return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    if name == "rotation":
        return image.rotate(12 * severity, fillcolor=(255, 255, 255))
    if name == "occlusion":
        occluded = image.copy()
        side = int(image.width * 0.12 * severity)
        left = (image.width - side) // 2
        ImageDraw.Draw(occluded).rectangle([left, left, left + side, left + side], fill=(0, 0, 0))
        return occluded
    raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")


def send_traffic(params: Params, url: str, requests_count: int, corruption: str | None = None,
                 severity: int = 3, batch: int = 8, timeout: float = 120.0, seed: int = 0) -> dict:
    host = urlparse(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise UserError(f"{url}: simulated traffic goes to this machine only (127.0.0.1 or localhost)")
    layout = Artifacts(params)
    rows = load_split(layout.manifest, "test")
    # A seeded shuffle: the manifest is sorted by category, and any prefix of the traffic should
    # carry the usual mix of categories, or the prediction column alone looks drifted.
    order = np.random.default_rng(seed).permutation(len(rows))
    paths = [layout.raw_dir / rows["path"].iloc[i] for i in order]
    sent = failed = 0
    with requests.Session() as session:
        while sent < requests_count:
            files = []
            for n in range(min(batch, requests_count - sent)):
                image = Image.open(paths[(sent + n) % len(paths)]).convert("RGB")
                if corruption:
                    image = corrupt(image, corruption, severity, seed=sent + n)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                files.append(("images", (f"{sent + n}.png", buffer.getvalue(), "image/png")))
            answer = session.post(f"{url.rstrip('/')}/classify_batch", files=files, timeout=timeout)
            failed += 0 if answer.status_code == 200 else len(files)
            sent += len(files)
    log.info("sent %d images (%s) to %s, %d failed", sent, f"{corruption} x{severity}" if corruption else "clean",
             url, failed)
    return {"sent": sent, "failed": failed, "corruption": corruption, "severity": severity if corruption else 0}
