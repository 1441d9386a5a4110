"""Stage `package`: promote what the gate chose to the BentoML model store, then build a Bento
(service + pinned promoted model). Every write to the model store happens here.

    vgg2resnet package           # or: dvc repro package

The promoted version carries the variant's file and metadata, its drift projection and drift
reference, and the gate's results and lineage as metadata. Promotion is idempotent: when the
version in production already holds the same weights in the same form, nothing new is saved.
A rejected student is never promoted or packaged: the stage says so, records it in
reports/package.json and exits 0, so that `dvc repro` keeps the gate's record (see
`vgg2resnet gate --strict`).
"""

from __future__ import annotations

import logging

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts, read_json
from vgg2resnet.config import Params, UserError
from vgg2resnet.models.checkpoint import read_meta
from vgg2resnet.packaging import bento, store
from vgg2resnet.serving.limits import RequestLimits

log = logging.getLogger(__name__)


def promote(params: Params) -> tuple[dict, str | None, bool]:
    """(the gate's report, the promoted tag or None when the gate rejected the student, whether
    a new version was saved)."""
    layout = Artifacts(params)
    gate = read_json(layout.gate_json, "gate")
    if gate.get("decision") != "promote":
        served = store.current(params.serving.model_name)
        log.info(
            "no model promoted: %s",
            f"{served.tag} stays in production with its own drift reference"
            if served is not None
            else "nothing is served or monitored yet",
        )
        return gate, None, False
    artifact = layout.student(gate["variant"])
    student = read_meta(artifact)
    if student["sha256"] != gate["lineage"]["student_sha256"]:
        raise UserError(
            f"{artifact} is not the file the gate judged ({layout.gate_json}); "
            "run `vgg2resnet evaluate` and `vgg2resnet gate` again (or `dvc repro`)"
        )
    return gate, *store.promote(params, artifact, store.version_metadata(gate, student))


def warn_of_images_over_serving_limit(params: Params, image_size: int) -> int:
    """How many of the user's images the service would refuse for their pixels, with a warning
    when there are any: clients sending images like them must downscale them first."""
    sizes = pd.read_parquet(Artifacts(params).manifest, columns=["width", "height"])
    limits = RequestLimits.of(params.serving, image_size)
    over = limits.images_over(sizes["width"], sizes["height"])
    if over:
        log.warning(
            "%d of your %d images are over %s, which the service refuses (400): your clients must "
            "downscale such images before sending them, or raise serving.max_image_area (what the "
            "worst request costs rises with it: docs/serving.md)",
            over,
            len(sizes),
            limits.describe_image(),
        )
    return over


def run(params: Params) -> dict:
    layout = Artifacts(params)
    gate, model_tag, new_version = promote(params)
    if model_tag is None:
        failed = [c["name"] for c in gate.get("checks", []) if not c.get("passed")]
        result = {
            "packaged": False,
            "model_tag": None,
            "reason": f"the gate rejected the student (failed: {', '.join(failed)})",
        }
        log.warning("package: nothing promoted or packaged: %s; see %s", result["reason"], layout.gate_markdown)
    else:
        bento_tag = bento.build(model_tag)
        result = {
            "packaged": True,
            "bento": bento_tag,
            "model_tag": model_tag,
            "variant": gate["variant"],
            "new_version": new_version,
            "images_over_serving_limit": warn_of_images_over_serving_limit(
                params, read_meta(layout.student(gate["variant"]))["preprocessing"]["image_size"]
            ),
            "serve": f"bentoml serve {bento_tag}",
            "containerize": f"bentoml containerize {bento_tag}",
        }
        log.info("built Bento %s: `bentoml serve %s`", bento_tag, bento_tag)
    atomic.write_json(layout.package_json, result)
    return result
