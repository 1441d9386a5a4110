"""`vgg2resnet simulate-traffic`: real requests from the test split to a running service,
clean or with a named corruption, so a user can watch the monitor react. Loopback only."""

from __future__ import annotations

import io
import logging
from urllib.parse import urlparse

import numpy as np
import requests
from PIL import Image

from vgg2resnet.config import Params
from vgg2resnet.data.datasets import load_split
from vgg2resnet.errors import UserError
from vgg2resnet.monitoring.corruptions import corrupt

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def send_traffic(params: Params, url: str, requests_count: int, corruption: str | None = None,
                 severity: int = 3, batch: int = 8, timeout: float = 120.0, seed: int = 0) -> dict:
    host = urlparse(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise UserError(f"{url}: simulated traffic goes to this machine only (127.0.0.1 or localhost)")
    rows = load_split(params.data.prepared_dir, "test")
    # A seeded shuffle: the manifest is sorted by category, and any prefix of the traffic should
    # carry the usual mix of categories, or the prediction column alone looks drifted.
    order = np.random.default_rng(seed).permutation(len(rows))
    paths = [params.data.raw_dir / rows["path"].iloc[i] for i in order]
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
