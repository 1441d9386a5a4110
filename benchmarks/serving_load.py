"""Load on the classifier service (loopback only, bounded in time) next to the raw batched
model throughput measured in the same run (the ceiling).

    python benchmarks/serving_load.py --duration 60                          # the promoted model
    python benchmarks/serving_load.py --duration 60 --images-per-request 32  # clients that batch
    python benchmarks/serving_load.py --duration 60 --image-size 224         # int8 student at 224 px

Runs by hand (not in CI). Needs a promoted model (`dvc repro`) and the demo data. The load comes
from `wrk` (a separate C process; `apt-get install wrk`) when it is on PATH, else from Python
threads in this process, which on a small machine compete with the server for the cores.
Throughput is counted in images, so requests that carry several images (`--images-per-request`,
up to serving.max_batch_size) compare with the raw ceiling directly. `--image-size` serves the
student with its input size changed (`--variant`: int8 ONNX, quantized here as the compress
stage does, or the fp32 checkpoint), as a model of a real image size would cost; it is saved
under its own name, never promoted, and deleted when the run ends.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bentoml
import numpy as np
import requests
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from vgg2resnet.artifacts import Artifacts, StoreLayout, sidecar
from vgg2resnet.compress.export import quantize_on_train_sample
from vgg2resnet.compress.onnx import export_onnx
from vgg2resnet.config import Params, load_params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, load_split
from vgg2resnet.data.images import decode
from vgg2resnet.data.shards import StoredImages
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import load_model, save_model, write_sidecar
from vgg2resnet.models.variants import load_runner
from vgg2resnet.packaging import store
from vgg2resnet.serving.auth import auth_headers
from vgg2resnet.serving.classifier import Predictor, fit_projection
from vgg2resnet.serving.server import local_server

BOUNDARY = "vgg2resnetbench"
WRK_SCRIPT = f"""
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"
local auth = os.getenv("BENCH_AUTH")
if auth then wrk.headers["Authorization"] = auth end
"""


def multipart_body(payloads: list[bytes]) -> bytes:
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()
    return b"".join(part + p + b"\r\n" for p in payloads) + f"--{BOUNDARY}--\r\n".encode()


def load_wrk(url: str, payloads: list[bytes], concurrency: int, duration: float, headers: dict) -> dict:
    """The same request (these images) from wrk, a separate process."""
    body = multipart_body(payloads)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "body").write_bytes(body)
        (Path(scratch) / "post.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(2, concurrency)}",
                f"-c{concurrency}",
                f"-d{int(duration)}s",
                "--latency",
                "--timeout",
                "60s",
                "-s",
                str(Path(scratch) / "post.lua"),
                f"{url}/classify_batch",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={
                "BENCH_BODY": str(Path(scratch) / "body"),
                "PATH": "/usr/bin:/bin",
                **({"BENCH_AUTH": headers["Authorization"]} if headers else {}),
            },
        ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    req_s = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "concurrency": concurrency,
        "requests": requests_done,
        "errors": errors,
        "req_s": req_s,
        "img_s": req_s * len(payloads),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
    }


# Train images the bench model's drift projection is fitted on: its features are the unpruned
# student's (2,048 wide), so the promoted version's projection does not fit them.
PROJECTION_IMAGES = 64


def bench_model(params: Params, image_size: int, variant: str) -> str:
    """The student at another input size, as `variant`, with a drift projection of its own,
    saved as its own model (never promoted)."""
    categories = data_categories(params)
    model, meta = load_model(Artifacts(params).student(), categories)
    meta["preprocessing"]["image_size"] = image_size
    with tempfile.TemporaryDirectory() as scratch:
        if variant == "pytorch_fp32":
            artifact = Path(scratch) / StoreLayout.MODEL
            save_model(artifact, model, meta)
        else:
            fp32, artifact = Path(scratch) / "fp32.onnx", Path(scratch) / StoreLayout.ONNX
            export_onnx(model, fp32, image_size, params.compress.opset)
            quantize_on_train_sample(params, fp32, artifact, categories, transform_from_meta(meta["preprocessing"]))
            write_sidecar(artifact, meta)
        runner, _ = load_runner(artifact, categories)
        loader = eval_loader(
            params, "train", categories, 32, transform_from_meta(meta["preprocessing"]), limit=PROJECTION_IMAGES
        )
        features = torch.cat([runner(images)[1] for images, *_ in loader])
        projection = Path(scratch) / StoreLayout.PROJECTION
        torch.save(fit_projection(features, params.serving.embedding_dims), projection)
        return store.save_version(
            f"{params.serving.model_name}-bench{image_size}",
            {
                artifact.name: artifact,
                StoreLayout.META: sidecar(artifact),
                StoreLayout.PROJECTION: projection,
            },
            {"variant": variant, "preprocessing": meta["preprocessing"]},
            promoted=False,
        )


def load_threads(url: str, payloads: list[bytes], concurrency: int, duration: float, headers: dict) -> dict:
    """The same request (these images) from Python threads in this process."""
    files = [("images", ("x.png", p, "image/png")) for p in payloads]
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        nonlocal errors
        session = requests.Session()
        session.headers.update(headers)
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                ok = session.post(f"{url}/classify_batch", files=files, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start) if ok else None
                errors += 0 if ok else 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "req_s": len(latencies) / elapsed,
        "img_s": len(latencies) * len(payloads) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    }


def wait_until_idle(url: str, timeout: float = 300.0) -> None:
    """Let the requests still in flight from the previous level finish: counted against
    serving.max_concurrency, they would turn the next level's first requests into 429s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text)
        if not any(
            sample.value
            for family in metrics
            if family.name == "bentoml_service_request_in_progress"
            for sample in family.samples
            if sample.labels.get("endpoint") == "/classify_batch"
        ):
            return
        time.sleep(0.5)
    raise SystemExit(f"the service still had requests in flight after {timeout:.0f} s")


def raw_throughput(model_dir: Path, images: list[Image.Image], batch: int, seconds: float) -> float:
    classifier = Predictor(model_dir)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.predict(images[:batch], top_k=3)
        done += batch
    return done / (time.perf_counter() - start)


def run(args: argparse.Namespace, params: Params, model: bentoml.Model) -> None:
    print(
        f"model {model.tag} ({model.info.metadata.get('variant', 'pytorch_fp32')}); load from "
        f"{args.client}, {args.images_per_request} image(s) per request",
        flush=True,
    )
    layout = Artifacts(params)
    stored = StoredImages(layout.raw_dir, load_split(layout.manifest, "test"))
    payloads = [stored.read(i) for i in range(args.images_per_request)]
    images = [decode(stored.read(i)) for i in range(params.serving.max_batch_size)]

    ceiling = raw_throughput(Path(model.path), images, params.serving.max_batch_size, 10.0)
    print(f"raw batched model throughput (batch {params.serving.max_batch_size}): {ceiling:.1f} img/s", flush=True)
    root = Path.cwd()
    headers = auth_headers(params.serving)
    with local_server(str(model.tag), cwd=root, project_root=root, params_file=root / "params.yaml") as url:
        for level in args.concurrency:
            wait_until_idle(url)
            load = load_wrk if args.client == "wrk" else load_threads
            r = load(url, payloads, level, args.duration, headers)
            print(
                f"concurrency {level:3d}: {r['req_s']:7.1f} req/s {r['img_s']:7.1f} img/s  "
                f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  "
                f"({r['requests']} requests)  {r['img_s'] / ceiling:.2f}x raw",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--image-size", type=int, default=None, help="serve the student at this input size")
    parser.add_argument(
        "--variant",
        choices=["onnx_int8", "pytorch_fp32"],
        default="onnx_int8",
        help="with --image-size: the variant to serve",
    )
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--client", choices=["wrk", "threads"], default="wrk" if shutil.which("wrk") else "threads")
    args = parser.parse_args()

    params = load_params()
    if not 1 <= args.images_per_request <= params.serving.max_batch_size:
        parser.error(f"--images-per-request must be 1..{params.serving.max_batch_size} (serving.max_batch_size)")
    promoted = store.current(params.serving.model_name)
    if promoted is None:
        raise SystemExit("no promoted model: run `dvc repro` first")
    bench_tag = bench_model(params, args.image_size, args.variant) if args.image_size else None
    if bench_tag:
        promoted = bentoml.models.get(bench_tag)
    try:
        run(args, params, promoted)
    finally:
        if bench_tag:  # a stand-in for a real model, not worth keeping in the store
            bentoml.models.delete(bench_tag)
