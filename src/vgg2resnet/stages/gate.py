"""Stage `gate`: decide whether the student may replace the teacher. It only judges: its
outputs are reports/gate.json, gate.md and gate.html (the page to look at), and it reads the
model store only to compare with the model in production (`no_regression`); `package`
promotes what it chose.

    vgg2resnet gate              # or: dvc repro gate

Each variant of the student (fp32 PyTorch, fp32 ONNX, int8 ONNX, and the pruned network's fp32
and int8 ONNX when prune.enabled) meets the same checks; among those that pass and
gate.variants lists, gate.prefer picks the one to promote (the smallest by default).

Exit semantics: the stage exits 0 whatever the decision, so that `dvc repro` records
reports/gate.json; a rejected student is never saved to the model store, and `package`
(and the Prefect flow) stop on it. `vgg2resnet gate --strict` exits 3 on a rejection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import load_split
from vgg2resnet.data.shards import StoredImages
from vgg2resnet.gate.html import gallery_counts, render_html
from vgg2resnet.gate.inputs import load_inputs, promoted_top1
from vgg2resnet.gate.policy import choose, evaluate_policy, failed_input
from vgg2resnet.gate.report import candidate_row, render_markdown, summary
from vgg2resnet.lineage import git_revision, params_hash, recorded_data_version

log = logging.getLogger(__name__)


class GateRejected(UserError):
    """Raised by `gate --strict` when the candidate was not promoted."""

    exit_code = 3


def run(params: Params, strict: bool = False) -> dict:
    categories = data_categories(params)
    chosen, candidates = None, {}
    try:
        report, predictions, teacher, variants = load_inputs(params, categories)
        production_top1 = promoted_top1(params, categories, variants["pytorch_fp32"]["weights_sha256"])
        checks_of = {v: evaluate_policy(report, predictions, params.gate, production_top1, v) for v in variants}
        candidates = {v: candidate_row(v, report["candidates"][v], checks_of[v], params.gate) for v in variants}
        chosen = choose([v for v, c in candidates.items() if c["passed"]], report["candidates"], params.gate)
        checks = (
            checks_of[chosen]
            if chosen
            else [replace(c, name=f"{v}.{c.name}") for v in params.gate.variants if v in variants for c in checks_of[v]]
        )
    except ValueError as exc:
        report, predictions, teacher, variants = {}, None, {}, {}
        checks = [failed_input("inputs", str(exc))]
    failed = [c for c in checks if not c.passed]
    student = variants.get(chosen or "pytorch_fp32", {})
    result = {
        "decision": "promote" if chosen else "reject",
        "variant": chosen,
        "summary": summary(report, chosen, candidates, failed),
        "candidates": candidates,
        "checks": [c.as_dict() for c in checks],
        "lineage": {
            "data_version": recorded_data_version(params.data.raw_dir),
            "git_revision": git_revision(),
            "params_hash": params_hash(params),
            "teacher_sha256": teacher.get("sha256"),
            "student_sha256": student.get("sha256"),
            "student_init": student.get("init"),
        },
    }
    if predictions is not None:
        result["disagreements"] = gallery_counts(predictions, chosen or "pytorch_fp32")
    layout = Artifacts(params)
    atomic.write_json(layout.gate_json, result)
    atomic.write_text(layout.gate_markdown, render_markdown(result))
    images = None if predictions is None else _test_images(params)
    atomic.write_text(layout.gate_html, render_html(result, report, predictions, categories, images, params.report))
    for check in checks:
        log.info("%s %s: %s", "pass" if check.passed else "FAIL", check.name, check.reason)
    log.info(
        "gate decision: %s%s (%s; to look at: %s)",
        result["decision"].upper(),
        f" {chosen}" if chosen else "",
        layout.gate_markdown,
        layout.gate_html,
    )
    if strict and not chosen:
        raise GateRejected(f"the gate rejected the student: {'; '.join(c.reason for c in failed)}")
    return {
        "decision": result["decision"],
        "variant": chosen,
        "failed": sorted({c.name.split(".")[-1] for c in failed}),
    }


def _test_images(params: Params) -> Callable[[str], bytes]:
    """A test image's bytes by its path, out of data/raw's shards (for the report's gallery)."""
    layout = Artifacts(params)
    rows = load_split(layout.manifest, "test")
    images, position = StoredImages(layout.raw_dir, rows), pd.Index(rows["path"])

    def read(path: str) -> bytes:
        try:
            return images.read(position.get_loc(path))
        except (KeyError, OSError):  # not in the manifest, or its shard is gone: no thumbnail
            return b""

    return read
