"""Latency (batch 1, p50/p95 over a warm run) and throughput (a larger batch) of a model, a
PyTorch module or any callable on a batch (an ONNX Runtime variant)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def measure_latency(model: Callable[[torch.Tensor], Any], image_size: int, device: torch.device, *,
                    batch_size: int, warmup: int, runs: int) -> dict[str, float]:
    """`model` must already be on `device` (and in eval mode)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timings(batch: int, count: int) -> np.ndarray:
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
        return np.array(times)

    single = timings(1, runs) * 1000
    batched = timings(batch_size, max(1, runs // 4))
    return {
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "throughput_img_s": float(batch_size / np.median(batched)),
        "throughput_batch_size": batch_size,
    }
