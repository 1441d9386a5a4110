"""Stage `sources`: record what the pipeline reads from outside the repository, so that DVC
reruns the stages that read it when, and only when, it changed.

    vgg2resnet sources           # `dvc repro` runs it every time (always_changed in dvc.yaml)

It writes `data.sources_dir/<record>.json` for `prepare` (your image folder), `teacher` (its
checkpoint, categories file and pretrained weights) and `distill` (its pretrained weights); see
`vgg2resnet.data.sources`. A record is rewritten only when its content changed, and the stage
says which ones did, so a user can tell from its output which stages `dvc repro` will rerun.
"""

from __future__ import annotations

import json
import logging

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params
from vgg2resnet.data.sources import SOURCE_RECORDS, SourceHashes, source_records

log = logging.getLogger(__name__)


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(params: Params) -> dict:
    layout = Artifacts(params)
    with SourceHashes(layout.source_hashes, params.data.reuse_by_stat) as hashes:
        records = source_records(params, hashes)
        changed = []
        for stage, name in SOURCE_RECORDS.items():
            path = layout.source_record(name)
            if _read(path) != records[name]:
                atomic.write_json(path, records[name])
                changed.append(stage)
        hashes.save()
    images = records["images"]
    seen = "the demo" if images["source"] == "demo" else f"{images['images']} images in {images['source']}"
    if changed:
        log.info("sources: %s; new or changed since the last run, so DVC reruns: %s", seen, ", ".join(changed))
    else:
        log.info("sources: %s; nothing outside the repository changed since the last run", seen)
    return {"changed": changed, **records}
