"""The worst requests a client may send within the service's limits, next to ordinary ones: what
one hostile but well-formed request costs the server in time and memory.

    python benchmarks/hostile_uploads.py                    # the promoted model (after dvc repro)
    python benchmarks/hostile_uploads.py --image-size 224   # the student served at 224 px

Runs by hand (not in CI), on loopback, against a real `bentoml serve` of the promoted model
(with `--image-size`, the student at that input size, saved under its own name and deleted
afterwards, as in serving_load.py). Ordinary requests carry JPEGs of 1.5 times the network's
input side, as a camera saves them: one per request, as many as the `pair` case below, and a
full batch (serving.max_batch_size). The hostile cases are
each the worst the limits admit for the model served (vgg2resnet.serving.limits):

- `aspect`: the largest image at validation.max_aspect_ratio within the per-image pixels;
- `pixels`, `png`, `webp`: one image of noise at the per-image pixels in each format, encoded
  to decode as slowly as it can (JPEG at quality 100 without chroma subsampling, lossy WebP at
  quality 100: about 66 ns a pixel on this machine's cores, eight times JPEG's);
- `pair`: as many WebPs at the per-image pixels as the request's pixels admit;
- `batch`: serving.max_batch_size JPEGs of noise that fill the request's pixels together (as
  a camera saves them: at quality 100 they would pass the byte limit);
- `bytes`: one PNG of noise at the per-image pixels, padded with an ancillary chunk that
  decoders skip until its body fills the byte limit;
- `over_bytes`: a body one MiB over the byte limit (refused, 413);
- `slow_bodies`: 16 clients sending a body at 20 bytes a second while ordinary requests run.

Prints each case's request time (the median of `--tries` requests: the first request of a
kind may pay one-time costs, such as the allocator growing, that no client can make the server
pay again), then `worst_request_s_ratio=` (the slowest hostile case over the p99 of ordinary
requests at the same batch size), `slow_bodies_p99_ratio=` (ordinary p99 while slow bodies
trickle in, over ordinary p99 alone) and `rss_growth_mib=` (the server's
peak memory, PSS of its process tree, during the hostile requests minus before them).
"""

from __future__ import annotations

import argparse
import io
import socket
import struct
import tempfile
import threading
import time
import zlib
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
from vgg2resnet.serving.limits import RequestLimits, model_input_size
from vgg2resnet.serving.server import local_server

ROOT = Path(__file__).resolve().parents[1]


# The slowest JPEG to decode, and one as a camera saves it.
WORST_JPEG = {"quality": 100, "subsampling": 0}
CAMERA_JPEG = {"quality": 90}


def noise(width: int, height: int, fmt: str, seed: int = 0, **options) -> bytes:
    """An image of noise (what compresses worst and decodes slowest) encoded as `fmt`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def padded_png(side: int, size: int) -> bytes:
    """A PNG of noise, `size` bytes long: a private ancillary chunk (which every decoder skips)
    before IEND makes up the difference."""
    png = noise(side, side, "PNG", compress_level=1)
    padding = max(0, size - len(png) - 12)
    chunk = struct.pack(">I", padding) + b"prVt" + b"\0" * padding
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]))
    return png[:-12] + chunk + png[-12:]


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
    parser.add_argument("--tries", type=int, default=5, help="requests per hostile case; its time is their median")
    args = parser.parse_args()
    params = load_params(args.params)
    serving, policy = params.serving, params.validation
    tag = (
        bench_model(params, args.image_size, "onnx_int8")
        if args.image_size
        else str(store.current(serving.model_name).tag)
    )
    metadata = bentoml.models.get(tag).info.metadata
    size = model_input_size(metadata)
    limits = RequestLimits.of(serving, size)
    try:
        with (
            tempfile.TemporaryDirectory() as scratch,
            local_server(tag, cwd=Path(scratch), project_root=ROOT, params_file=args.params.resolve()) as url,
        ):
            port = int(url.rsplit(":", 1)[1])
            print(f"serving {tag} ({size} px) at {url}", flush=True)
            ordinary = noise(3 * size // 2, 3 * size // 2, "JPEG", **CAMERA_JPEG)
            full = serving.max_batch_size
            for _ in range(5):  # warm-up
                timed(url, "classify", [("image", ("w.jpg", ordinary, "image/jpeg"))])
            pair = min(full, limits.request_pixels // limits.image_pixels)
            p99 = {
                1: ordinary_p99(url, ordinary, 1, args.requests),
                pair: ordinary_p99(url, ordinary, pair, args.requests),
                full: ordinary_p99(url, ordinary, full, args.requests // 4),
            }
            for batch, seconds in p99.items():
                print(f"ordinary, {batch} image(s) per request: p99 {1000 * seconds:.1f} ms", flush=True)

            shorter = int((limits.image_pixels / policy.max_aspect_ratio) ** 0.5)
            longer = min(int(shorter * policy.max_aspect_ratio), policy.max_side)
            side = min(int(limits.image_pixels**0.5), policy.max_side)
            each = min(int((limits.request_pixels / full) ** 0.5), policy.max_side)
            fill = limits.request_bytes - 2**16  # the form's framing takes the rest
            webp = noise(side, side, "WEBP", quality=100)  # lossy: the slowest format to decode
            cases = {
                "aspect": (1, [("image", ("a.jpg", noise(longer, shorter, "JPEG", **WORST_JPEG), "image/jpeg"))]),
                "pixels": (1, [("image", ("p.jpg", noise(side, side, "JPEG", **WORST_JPEG), "image/jpeg"))]),
                "png": (1, [("image", ("p.png", noise(side, side, "PNG", compress_level=1), "image/png"))]),
                "webp": (1, [("image", ("p.webp", webp, "image/webp"))]),
                "pair": (
                    pair,
                    [("images", (f"{i}.webp", webp, "image/webp")) for i in range(pair)],
                ),
                "batch": (
                    full,
                    [
                        ("images", (f"{i}.jpg", noise(each, each, "JPEG", i, **CAMERA_JPEG), "image/jpeg"))
                        for i in range(full)
                    ],
                ),
                "bytes": (1, [("image", ("b.png", padded_png(side, fill), "image/png"))]),
                "over_bytes": (1, [("image", ("o.png", b"\0" * (limits.request_bytes + 2**20), "image/png"))]),
            }
            print(
                f"limits: {limits.describe_image()} per image, {limits.describe_request()} per request, "
                f"{limits.describe_bytes()}",
                flush=True,
            )
            memory = PeakMemory(port)
            before = memory.now()
            memory.start()
            worst = dict.fromkeys(p99, 0.0)
            for name, (batch, files) in cases.items():
                endpoint = "classify" if batch == 1 else "classify_batch"
                answers = [timed(url, endpoint, files) for _ in range(args.tries)]
                if any(status >= 500 for _, status in answers):
                    raise SystemExit(f"{name}: the server answered {[status for _, status in answers]}")
                times = sorted(seconds for seconds, _ in answers)
                seconds = float(np.median(times))
                worst[batch] = max(worst[batch], seconds)
                print(
                    f"{name}: median {seconds:.3f} s (slowest {times[-1]:.3f} s), status {answers[0][1]}, "
                    f"{sum(len(f[1][1]) for f in files) / 2**20:.1f} MiB sent",
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
