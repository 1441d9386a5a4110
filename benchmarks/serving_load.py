"""Load on the classifier service (loopback only, bounded in time) next to the raw batched
model throughput measured in the same run (the ceiling).

    python benchmarks/serving_load.py --duration 60                    # the promoted model
    python benchmarks/serving_load.py --duration 60 --image-size 224   # the fp32 student at 224 px

Runs by hand (not in CI). Needs a promoted model (`dvc repro`) and the demo data. The load comes
from `wrk` (a separate C process; `apt-get install wrk`) when it is on PATH, else from Python
threads in this process, which on a small machine compete with the server for the cores.
`--image-size` serves the fp32 student (models/student.pt) with its input size changed, as a
model of a real image size would cost; it is saved under its own name, never promoted.
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

import numpy as np
import pandas as pd
import requests
import torch
from PIL import Image

from vgg2resnet.config import Params, load_params
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import Classifier
from vgg2resnet.serving.server import local_server

BOUNDARY = "vgg2resnetbench"
WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=%s"
""" % BOUNDARY


def load_wrk(url: str, payload: bytes, concurrency: int, duration: float) -> dict:
    """The same request (one image) from wrk, a separate process."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "body").write_bytes(body)
        (Path(scratch) / "post.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{int(duration)}s",
                              "--latency", "--timeout", "60s", "-s", str(Path(scratch) / "post.lua"),
                              f"{url}/classify_batch"], capture_output=True, text=True, check=True,
                             env={"BENCH_BODY": str(Path(scratch) / "body"), "PATH": "/usr/bin:/bin"}).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    return {"concurrency": concurrency, "requests": requests_done, "errors": errors,
            "req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def bench_model(params: Params, image_size: int) -> str:
    """The fp32 student with another input size, saved as its own model (never promoted)."""
    payload = torch.load(params.paths.models_dir / "student.pt", map_location="cpu", weights_only=True)
    payload["meta"]["preprocessing"]["image_size"] = image_size
    promoted = store.current(params.serving.model_name)
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / store.MODEL_FILE
        torch.save(payload, model)
        return store.save_version(f"{params.serving.model_name}-bench{image_size}", {
            store.MODEL_FILE: model, store.PROJECTION_FILE: Path(promoted.path_of(store.PROJECTION_FILE)),
        }, {"variant": "pytorch_fp32", "image_size": image_size}, promoted=False)


def load_threads(url: str, payloads: list[bytes], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker(offset: int) -> None:
        nonlocal errors
        session = requests.Session()
        i = offset
        while time.monotonic() < stop:
            body = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                ok = session.post(f"{url}/classify_batch", files=[("images", ("x.png", body, "image/png"))],
                                  timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start) if ok else None
                errors += 0 if ok else 1
            i += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "req_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def raw_throughput(model_dir: Path, images: list[Image.Image], batch: int, seconds: float) -> float:
    classifier = Classifier(model_dir)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.predict(images[:batch], top_k=3)
        done += batch
    return done / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--image-size", type=int, default=None, help="serve the fp32 student at this size")
    parser.add_argument("--client", choices=["wrk", "threads"], default="wrk" if shutil.which("wrk") else "threads")
    args = parser.parse_args()

    params = load_params()
    promoted = store.current(params.serving.model_name)
    if promoted is None:
        raise SystemExit("no promoted model: run `dvc repro` first")
    if args.image_size:
        import bentoml

        promoted = bentoml.models.get(bench_model(params, args.image_size))
    print(f"model {promoted.tag} ({promoted.info.metadata.get('variant', 'pytorch_fp32')}); load from {args.client}")
    manifest = pd.read_parquet(params.data.prepared_dir / "manifest.parquet")
    paths = [params.data.raw_dir / p for p in manifest[manifest["split"] == "test"]["path"]]
    payloads = [p.read_bytes() for p in paths]
    images = [Image.open(p).convert("RGB") for p in paths[: params.serving.max_batch_size]]

    ceiling = raw_throughput(Path(promoted.path), images, params.serving.max_batch_size, 10.0)
    print(f"raw batched model throughput (batch {params.serving.max_batch_size}): {ceiling:.1f} img/s")
    root = Path.cwd()
    with local_server(str(promoted.tag), cwd=root, project_root=root, params_file=root / "params.yaml") as url:
        for level in args.concurrency:
            r = (load_wrk(url, payloads[0], level, args.duration) if args.client == "wrk"
                 else load_threads(url, payloads, level, args.duration))
            print(f"concurrency {level:3d}: {r['req_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  ({r['requests']} requests)  "
                  f"{r['req_s'] / ceiling:.2f}x raw")
