"""Stage `prepare`: images -> data/raw (versioned) -> manifest.parquet + categories.json.

    vgg2resnet prepare          # or: dvc repro prepare
"""

from __future__ import annotations

import logging
from pathlib import Path

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.data.categories import expected_categories, order_categories
from vgg2resnet.data.demo import write_demo_images
from vgg2resnet.data.imagefolder import copy_image_folder, scan_image_folder
from vgg2resnet.data.manifest import build_manifest
from vgg2resnet.errors import UserError

log = logging.getLogger(__name__)
MAX_LISTED = 20


def _import_source(params: Params) -> dict[str, int]:
    raw_dir = params.data.raw_dir
    if params.data.source == "demo":
        with atomic.atomic_dir(raw_dir) as staging:
            count = write_demo_images(staging, params.data.demo_image_size)
        log.info("demo data set: %d digit images at %d px in %s", count, params.data.demo_image_size, raw_dir)
        return {"skipped_hidden": 0, "skipped_non_image": 0}
    source = Path(params.data.source).expanduser()
    if source.resolve() == raw_dir.resolve() or raw_dir.resolve() in source.resolve().parents:
        raise UserError(
            f"data.source ({source}) lies inside data.raw_dir ({raw_dir}), which this stage rebuilds; "
            "keep your originals elsewhere and point data.source at them"
        )
    scan = scan_image_folder(source)
    with atomic.atomic_dir(raw_dir) as staging:
        count = copy_image_folder(scan, source, staging)
    log.info("imported %d images from %s into %s (skipped %d hidden, %d non-image files)",
             count, source, raw_dir, scan.skipped_hidden, scan.skipped_non_image)
    return {"skipped_hidden": scan.skipped_hidden, "skipped_non_image": scan.skipped_non_image}


def run(params: Params) -> dict:
    skipped = _import_source(params)
    raw_dir = params.data.raw_dir
    scan = scan_image_folder(raw_dir)
    manifest = build_manifest(scan.files, raw_dir, params.data.split, params.data.seed,
                              params.data.max_pixels)
    broken = manifest[~manifest["decodes"]]
    if len(broken) and params.data.on_undecodable == "error":
        listed = [f"  {raw_dir / p}: {e}" for p, e in zip(broken["path"], broken["decode_error"])]
        more = f"\n  ... and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
        raise UserError(
            f"{len(broken)} file(s) with an image extension do not decode:\n"
            + "\n".join(listed[:MAX_LISTED]) + more
            + "\nremove or replace them (or set data.on_undecodable: record to let validation report them)"
        )
    expected, _ = expected_categories(params)
    categories = order_categories(sorted(scan.files), expected)
    out = params.data.prepared_dir
    with atomic.atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    atomic.write_json(out / "categories.json", categories)
    counts = manifest["split"].value_counts()
    summary = {
        "images": len(manifest),
        "categories": len(categories),
        **{f"{split}_images": int(counts.get(split, 0)) for split in ("train", "val", "test")},
        "undecodable": int(len(broken)),
        **skipped,
    }
    log.info("manifest: %s", summary)
    return summary
