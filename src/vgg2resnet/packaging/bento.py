"""The Bento: the service and the promoted model it is pinned to, built by `bentoml build`."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

from vgg2resnet.artifacts import BENTOFILE

log = logging.getLogger(__name__)


def build(model_tag: str) -> str:
    """`bentoml build` of the service pinned to model_tag; the Bento's tag."""
    log.info("building a Bento serving %s", model_tag)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            "-f",
            str(BENTOFILE),
            "--arg",
            f"model_tag={model_tag}",
            "--output",
            "tag",
            ".",
        ],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{build.stdout}\n{build.stderr}")
    match = re.search(r"__tag__:(\S+)", build.stdout)
    return match.group(1) if match else build.stdout.strip().splitlines()[-1]
