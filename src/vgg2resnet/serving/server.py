"""Start and stop a local `bentoml serve` of the classifier on 127.0.0.1 (demo, benchmarks, tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from vgg2resnet.config import load_params
from vgg2resnet.serving.auth import service_token
from vgg2resnet.serving.startup import REFUSAL

SERVICE = "services.classifier.service:Classifier"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_server(
    model_tag: str,
    *,
    cwd: Path,
    project_root: Path,
    params_file: Path,
    ready_timeout: float = 180.0,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Yield the URL of a ready server; the inference log lands under `cwd`. A server that
    stops while starting raises RuntimeError with the end of what it wrote."""
    service_token(load_params(params_file).serving)  # a missing token fails here, not after a timeout
    port = free_port()
    env = {
        **os.environ,
        "VGG2RESNET_PARAMS": str(Path(params_file).resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(project_root).resolve()), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryFile() as said:  # the server's log, for the reason it stopped
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                SERVICE,
                "--host",
                host,
                "--port",
                str(port),
                "--arg",
                f"model_tag={model_tag}",
            ],
            cwd=cwd,
            env=env,
            stdout=said,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None:
                    said.seek(0)
                    log = said.read().decode(errors="replace")
                    reasons = [line.partition(REFUSAL)[2] for line in log.splitlines() if REFUSAL in line]
                    raise RuntimeError(
                        f"bentoml serve exited with code {process.returncode}: "
                        + (f"{REFUSAL}{reasons[-1]}" if reasons else log[-3000:])
                    )
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or still loading
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service was not ready after {ready_timeout:.0f} s")
                time.sleep(1)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
