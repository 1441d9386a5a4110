"""Stage `validate`: Great Expectations over the manifest; a failed check stops the pipeline.

vgg2resnet validate          # or: dvc repro validate
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts, require
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.categories import data_categories, expected_categories
from vgg2resnet.data.imagefolder import source_root
from vgg2resnet.validation.frames import category_counts, manifest_frame, skipped_frame
from vgg2resnet.validation.suite import (
    MAX_LISTED,
    count_expectations,
    describe,
    manifest_expectations,
    run_checkpoint,
    skipped_expectations,
    summarise,
)

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    layout = Artifacts(params)
    manifest_path = require(layout.manifest, "prepare")
    manifest = pd.read_parquet(manifest_path)
    found = data_categories(params)
    expected, origin = expected_categories(params)
    if expected is None:
        log.warning(
            "no teacher categories or data.categories configured: the categories are taken "
            "from the data, so nothing checks them against a teacher"
        )
        expected = found

    vparams = params.validation
    skipped = json.loads(layout.skipped.read_text()) if layout.skipped.is_file() else []
    tables = {
        "manifest": (
            manifest_frame(manifest, vparams.near_duplicate_max_distance, source_root(params.data)),
            "path",
            manifest_expectations(vparams, expected),
        ),
        "category_counts": (category_counts(manifest), "category", count_expectations(vparams)),
        "skipped_files": (skipped_frame(skipped), "path", skipped_expectations(vparams)),
    }
    checks = summarise(run_checkpoint(tables, layout.validation_docs))

    failed = [c for c in checks if not c.success and c.severity == "fail"]
    warned = [c for c in checks if not c.success and c.severity == "warn"]
    summary = {
        "passed": not failed,
        "images": len(manifest),
        "categories_expected_from": origin,
        "expectations": len(checks),
        "failed": len(failed),
        "warnings": len(warned),
        "problems": [
            {**asdict(c), "offending": c.offending[:MAX_LISTED], "message": describe(c, expected, found)}
            for c in failed + warned
        ],
        "data_docs": str(layout.validation_docs_index),
    }
    atomic.write_json(
        layout.validation_result,
        {
            "summary": summary,
            "checks": [asdict(c) for c in checks],
        },
    )
    for check in warned:
        log.warning("warn  %s: %s", check.check, describe(check, expected, found))
    log.info(
        "validation: %d expectations, %d failed, %d warnings; report %s",
        len(checks),
        len(failed),
        len(warned),
        summary["data_docs"],
    )
    if failed:
        lines = "\n".join(f"  FAIL {c.check}: {describe(c, expected, found)}" for c in failed)
        raise UserError(
            f"data validation failed ({manifest_path}):\n{lines}\n"
            f"details: {layout.validation_result}, {summary['data_docs']}"
        )
    return {k: summary[k] for k in ("passed", "images", "expectations", "failed", "warnings")}
