"""`vgg2resnet simulate-traffic`: real requests from the test split to a running service,
clean or with a named corruption at severity 1-5, so a user can watch the monitor react.
Loopback only."""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

import numpy as np
import requests
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.datasets import load_split
from vgg2resnet.data.images import decode
from vgg2resnet.data.shards import StoredImages
from vgg2resnet.serving.auth import auth_headers

log = logging.getLogger(__name__)
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


def loopback_url(url: str) -> str:
    """The URL with its host resolved to a loopback address, or a UserError. Requests then go
    to that address, so a name cannot resolve elsewhere between this check and the request."""
    parts = urlsplit(url)
    refuse = f"{url}: simulated traffic goes to this machine only (127.0.0.1, ::1 or localhost)"
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise UserError(f"{refuse}; give a URL such as http://127.0.0.1:3000")
    try:
        found = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port or 80, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        raise UserError(f"{refuse}; {parts.hostname!r} does not resolve") from None
    addresses = sorted((ipaddress.ip_address(a.split("%")[0]) for a in found), key=lambda a: (a.version, int(a)))
    if not all(address.is_loopback for address in addresses):
        raise UserError(f"{refuse}; {parts.hostname!r} resolves to {', '.join(map(str, addresses))}")
    host = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
    return parts._replace(netloc=f"{host}:{port}" if port else host).geturl().rstrip("/")


def send_traffic(
    params: Params,
    url: str,
    requests_count: int,
    corruption: str | None = None,
    severity: int = 3,
    batch: int = 8,
    timeout: float = 120.0,
    seed: int = 0,
) -> dict:
    target = loopback_url(url)
    layout = Artifacts(params)
    rows = load_split(layout.manifest, "test")
    # A seeded shuffle: the manifest is sorted by category, and any prefix of the traffic should
    # carry the usual mix of categories, or the prediction column alone looks drifted.
    order = np.random.default_rng(seed).permutation(len(rows))
    images = StoredImages(layout.raw_dir, rows)
    sent = failed = 0
    refusal = ""  # the first refusal's reason, so that a run whose images the service refuses says why
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: the requests stay on this machine
        session.headers.update(auth_headers(params.serving))
        while sent < requests_count:
            files = []
            for n in range(min(batch, requests_count - sent)):
                image = decode(images.read(order[(sent + n) % len(order)]))
                if corruption:
                    image = corrupt(image, corruption, severity, seed=sent + n)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                files.append(("images", (f"{sent + n}.png", buffer.getvalue(), "image/png")))
            answer = session.post(f"{target}/classify_batch", files=files, timeout=timeout, allow_redirects=False)
            if answer.status_code == 401:
                raise UserError(
                    f"{url} answered 401: {answer.json()['error']}. Set serving.auth_token_env to "
                    "the name of the variable holding the service's token, and export it"
                )
            if answer.status_code != 200:
                failed += len(files)
                refusal = refusal or f"{answer.status_code}: {answer.text[:500]}"
            sent += len(files)
    log.info(
        "sent %d images (%s) to %s, %d failed",
        sent,
        f"{corruption} x{severity}" if corruption else "clean",
        url,
        failed,
    )
    if refusal:
        log.warning("the service refused some requests; the first answered %s", refusal)
    return {
        "sent": sent,
        "failed": failed,
        "first_refusal": refusal or None,
        "corruption": corruption,
        "severity": severity if corruption else 0,
    }
