"""Load on the classifier service (loopback only, bounded in time) next to the raw batched
model throughput measured in the same run (the ceiling).

    python benchmarks/serving_load.py --duration 60          # starts `bentoml serve` itself

Runs by hand (not in CI). Needs a promoted model (`dvc repro`) and the demo data.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from PIL import Image

from vgg2resnet.config import load_params
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import Classifier
from vgg2resnet.serving.server import local_server


def load(url: str, payloads: list[bytes], concurrency: int, duration: float) -> dict:
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
    args = parser.parse_args()

    params = load_params()
    promoted = store.current(params.serving.model_name)
    if promoted is None:
        raise SystemExit("no promoted model: run `dvc repro` first")
    manifest = pd.read_parquet(params.data.prepared_dir / "manifest.parquet")
    paths = [params.data.raw_dir / p for p in manifest[manifest["split"] == "test"]["path"]]
    payloads = [p.read_bytes() for p in paths]
    images = [Image.open(p).convert("RGB") for p in paths[: params.serving.max_batch_size]]

    ceiling = raw_throughput(Path(promoted.path), images, params.serving.max_batch_size, 10.0)
    print(f"raw batched model throughput (batch {params.serving.max_batch_size}): {ceiling:.1f} img/s")
    root = Path.cwd()
    with local_server(str(promoted.tag), cwd=root, project_root=root, params_file=root / "params.yaml") as url:
        for level in args.concurrency:
            r = load(url, payloads, level, args.duration)
            print(f"concurrency {level:3d}: {r['req_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  ({r['requests']} requests)  "
                  f"{r['req_s'] / ceiling:.2f}x raw")
