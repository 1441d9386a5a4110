"""The worst requests a client may send within the service's limits, next to ordinary ones: what
one hostile but well-formed request costs the server in time and memory.

    python benchmarks/hostile_uploads.py                    # the promoted model (after dvc repro)
    python benchmarks/hostile_uploads.py --image-size 224   # the student served at 224 px

Runs by hand (not in CI), on loopback, against a real `bentoml serve` of the promoted model
(with `--image-size`, the student at that input size, saved under its own name and deleted
afterwards, as in serving_load.py). Ordinary requests carry images of 1.5 times the network's
input side, one per request and a full batch (serving.max_batch_size). The hostile cases are
each the worst the settings admit:

- `aspect`: the largest image at validation.max_aspect_ratio (longer side validation.max_side);
- `pixels`: one image of serving.max_pixels pixels (a JPEG of noise);
- `batch`: serving.max_batch_size images that fill serving.max_request_pixels together;
- `bytes`: one PNG of noise whose body fills serving.max_request_bytes;
- `over_bytes`: a body one MiB over serving.max_request_bytes (refused, 413);
- `slow_bodies`: 16 clients sending a body at 20 bytes a second while ordinary requests run.

Prints each case's request time, then `worst_request_s_ratio=` (the slowest hostile request
over the p99 of ordinary ones at the same batch size), `slow_bodies_p99_ratio=` (ordinary p99
while slow bodies trickle in, over ordinary p99 alone) and `rss_growth_mib=` (the server's
peak memory, PSS of its process tree, during the hostile requests minus before them).
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import bentoml
import numpy as np
import psutil
import requests
from peak_rss import _pss
from PIL import Image
from serving_load import bench_model

from vgg2resnet.config import load_params
from vgg2resnet.packaging import store
from vgg2resnet.serving.server import local_server

ROOT = Path(__file__).resolve().parents[1]


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def noise_png(pixels: int) -> bytes:
    side = int(pixels**0.5)
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        out, "PNG", compress_level=1
    )
    return out.getvalue()


def timed(url: str, endpoint: str, files: list[tuple]) -> tuple[float, int]:
    start = time.perf_counter()
    answer = requests.post(f"{url}/{endpoint}", files=files, timeout=300)
    return time.perf_counter() - start, answer.status_code


def ordinary_p99(url: str, payload: bytes, batch: int, count: int) -> float:
    endpoint, field = ("classify", "image") if batch == 1 else ("classify_batch", "images")
    files = [(field, (f"{i}.jpg", payload, "image/jpeg")) for i in range(batch)]
    answers = [timed(url, endpoint, files) for _ in range(count)]
    if any(status != 200 for _, status in answers):
        raise SystemExit(f"ordinary requests were answered {sorted({status for _, status in answers})}, not 200")
    return float(np.percentile([seconds for seconds, _ in answers], 99))


def server_tree(port: int) -> list[psutil.Process]:
    [server] = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "serve" in (p.info["cmdline"] or []) and str(port) in (p.info["cmdline"] or [])
    ]
    return [server, *server.children(recursive=True)]


class PeakMemory(threading.Thread):
    """The largest summed PSS of the server's processes, sampled until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.peak, self.running = port, 0, True

    def now(self) -> int:
        return sum(_pss(p.pid) for p in server_tree(self.port) if p.is_running())

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.05)


def slow_body(port: int, stop: threading.Event) -> None:
    """A request whose body arrives a few bytes at a time until `stop`."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000\r\n\r\n--b\r\n"
        )
        while not stop.wait(0.5):
            connection.sendall(b"0123456789")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--image-size", type=int, default=None, help="serve the student at this input size")
    parser.add_argument("--requests", type=int, default=100, help="ordinary requests per batch size")
    args = parser.parse_args()
    params = load_params(args.params)
    serving, policy = params.serving, params.validation
    tag = (
        bench_model(params, args.image_size, "onnx_int8")
        if args.image_size
        else str(store.current(serving.model_name).tag)
    )
    metadata = bentoml.models.get(tag).info.metadata
    size = metadata.get("image_size") or metadata["preprocessing"]["image_size"]
    try:
        with (
            tempfile.TemporaryDirectory() as scratch,
            local_server(tag, cwd=Path(scratch), project_root=ROOT, params_file=args.params.resolve()) as url,
        ):
            port = int(url.rsplit(":", 1)[1])
            print(f"serving {tag} ({size} px) at {url}", flush=True)
            ordinary = jpeg(3 * size // 2, 3 * size // 2)
            full = serving.max_batch_size
            for _ in range(5):  # warm-up
                timed(url, "classify", [("image", ("w.jpg", ordinary, "image/jpeg"))])
            p99 = {
                1: ordinary_p99(url, ordinary, 1, args.requests),
                full: ordinary_p99(url, ordinary, full, args.requests // 4),
            }
            for batch, seconds in p99.items():
                print(f"ordinary, {batch} image(s) per request: p99 {1000 * seconds:.1f} ms", flush=True)

            longer = policy.max_side
            shorter = int(np.ceil(longer / policy.max_aspect_ratio))
            if longer * shorter > serving.max_pixels:
                longer = int((serving.max_pixels * policy.max_aspect_ratio) ** 0.5)
                shorter = int(np.ceil(longer / policy.max_aspect_ratio))
            side = min(int(serving.max_pixels**0.5), policy.max_side)
            each = min(int((serving.max_request_pixels / full) ** 0.5), policy.max_side)
            cases = {
                "aspect": (1, [("image", ("a.jpg", jpeg(longer, shorter), "image/jpeg"))]),
                "pixels": (1, [("image", ("p.jpg", jpeg(side, side), "image/jpeg"))]),
                "batch": (full, [("images", (f"{i}.jpg", jpeg(each, each, i), "image/jpeg")) for i in range(full)]),
                "bytes": (1, [("image", ("b.png", noise_png((serving.max_request_bytes - 2**20) // 3), "image/png"))]),
                "over_bytes": (1, [("image", ("o.png", b"\0" * (serving.max_request_bytes + 2**20), "image/png"))]),
            }
            memory = PeakMemory(port)
            before = memory.now()
            memory.start()
            worst = {1: 0.0, full: 0.0}
            for name, (batch, files) in cases.items():
                endpoint = "classify" if batch == 1 else "classify_batch"
                seconds, status = timed(url, endpoint, files)
                if status >= 500:
                    raise SystemExit(f"{name}: the server answered {status}")
                worst[batch] = max(worst[batch], seconds)
                print(
                    f"{name}: {seconds:.3f} s, status {status}, {sum(len(f[1][1]) for f in files) / 2**20:.1f} MiB "
                    "sent",
                    flush=True,
                )
            memory.running = False
            memory.join()

            stop = threading.Event()
            trickles = [threading.Thread(target=slow_body, args=(port, stop), daemon=True) for _ in range(16)]
            for trickle in trickles:
                trickle.start()
            slowed = ordinary_p99(url, ordinary, 1, args.requests)
            stop.set()
            print(f"ordinary p99 while 16 slow bodies arrive: {1000 * slowed:.1f} ms")

        ratio = max(worst[b] / p99[b] for b in worst)
        print(
            f"worst_request_s_ratio={ratio:.2f} slow_bodies_p99_ratio={slowed / p99[1]:.2f} "
            f"rss_growth_mib={(memory.peak - before) / 2**20:.0f}"
        )
    finally:
        if args.image_size:
            bentoml.models.delete(tag)


if __name__ == "__main__":
    main()
