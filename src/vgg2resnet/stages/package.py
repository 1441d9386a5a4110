"""Stage `package`: build a Bento (service + pinned promoted model) when the gate promoted one.

    vgg2resnet package           # or: dvc repro package

A rejected student is never packaged: the stage says so, records it in reports/package.json
and exits 0, so that `dvc repro` keeps the gate's record (see `vgg2resnet gate --strict`).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.errors import UserError
from vgg2resnet.stages.gate import gate_paths

log = logging.getLogger(__name__)
BENTOFILE = Path("services/classifier/bentofile.yaml")


def package_path(params: Params) -> Path:
    return params.paths.reports_dir / "package.json"


def run(params: Params) -> dict:
    gate_file = gate_paths(params)["json"]
    if not gate_file.is_file():
        raise UserError(f"{gate_file}: not found; run `vgg2resnet gate` first")
    gate = json.loads(gate_file.read_text())
    if gate.get("decision") != "promote" or not gate.get("promoted_tag"):
        failed = [c["name"] for c in gate.get("checks", []) if not c.get("passed")]
        result = {"packaged": False, "reason": f"the gate rejected the student (failed: {', '.join(failed)})"}
        log.warning("package: nothing packaged: %s; see %s", result["reason"], gate_paths(params)["markdown"])
    else:
        model_tag = gate["promoted_tag"]
        log.info("building a Bento serving %s", model_tag)
        build = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), "--arg", f"model_tag={model_tag}",
             "--output", "tag", "."],
            capture_output=True, text=True,
        )
        if build.returncode != 0:
            raise RuntimeError(f"bentoml build failed:\n{build.stdout}\n{build.stderr}")
        match = re.search(r"__tag__:(\S+)", build.stdout)
        bento = match.group(1) if match else build.stdout.strip().splitlines()[-1]
        result = {"packaged": True, "bento": bento, "model_tag": model_tag,
                  "serve": f"bentoml serve {bento}", "containerize": f"bentoml containerize {bento}"}
        log.info("built Bento %s: `bentoml serve %s`", bento, bento)
    atomic.write_json(package_path(params), result)
    return result
