"""Stage `prepare`: images -> data/raw (versioned) -> manifest.parquet + categories.json.

    vgg2resnet prepare          # or: dvc repro prepare

Each image is read once: hashed, fully decoded and (for a user's folder) copied into data/raw
from the same bytes, by `runtime.num_workers` processes. A re-run decodes only the files whose
content the previous manifest does not list, links unchanged ones from the previous data/raw,
and does not even read a file whose stat key is unchanged (see `vgg2resnet.data.intake`). A file that does not decode is handled by data.on_undecodable: `error`
stops here, `record` keeps it in the manifest for validation to fail on, `skip` leaves it out
of data/raw and the manifest and lists it in skipped.json, which validation reports as a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError
from vgg2resnet.data.categories import expected_categories, order_categories
from vgg2resnet.data.demo import write_demo_images
from vgg2resnet.data.imagefolder import ScanResult, scan_image_folder, source_root
from vgg2resnet.data.intake import Intake, Previous, Reading, read_images
from vgg2resnet.data.loaders import worker_count
from vgg2resnet.data.manifest import build_manifest
from vgg2resnet.data.sources import SourceStats

log = logging.getLogger(__name__)
MAX_LISTED = 20


def _undecodable_error(broken: list[tuple[Path, str]]) -> UserError:
    listed = [f"  {path}: {error}" for path, error in broken]
    more = f"\n  ... and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
    return UserError(
        f"{len(broken)} file(s) with an image extension do not decode:\n" + "\n".join(listed[:MAX_LISTED]) + more
        + "\nremove or replace them, or set data.on_undecodable in params.yaml to 'skip' (train without them; "
        "validation lists them) or 'record' (validation fails on them)"
    )


def _import_source(params: Params, staging: Path) -> tuple[ScanResult, Intake]:
    """Fill staging (the next data/raw) and return the scan and what was read."""
    data, layout = params.data, Artifacts(params)
    skip = data.on_undecodable == "skip"
    workers = worker_count(params.runtime)
    if data.source == "demo":
        count = write_demo_images(staging, data.demo_image_size)
        log.info("demo data set: %d digit images at %d px", count, data.demo_image_size)
        scan = scan_image_folder(staging)
        return scan, read_images(scan, Reading(data.max_pixels, None, skip, Previous.none()), workers)
    source = source_root(data)
    raw_dir = data.raw_dir
    if source.resolve() == raw_dir.resolve() or raw_dir.resolve() in source.resolve().parents:
        raise UserError(
            f"data.source ({source}) lies inside data.raw_dir ({raw_dir}), which this stage rebuilds; "
            "keep your originals elsewhere and point data.source at them"
        )
    scan = scan_image_folder(source, data.follow_external_links)
    total = sum(len(files) for files in scan.files.values())
    stats = SourceStats.load(layout.source_stats, source) if data.reuse_by_stat else None
    previous = Previous.load(layout.manifest, raw_dir, stats)
    log.info("reading %d images from %s (your folder is only read) into %s with %d worker(s); "
             "%d known from the previous manifest", total, source, raw_dir, workers, len(previous.facts))
    intake = read_images(scan, Reading(data.max_pixels, staging, skip, previous), workers)
    if stats is not None:
        log.info("%d of %d images unchanged since the last run (size, mtime, ctime, inode): linked unread",
                 intake.unread, total)
    return scan, intake


def run(params: Params) -> dict:
    data, layout = params.data, Artifacts(params)
    with atomic.atomic_dir(layout.raw_dir) as staging:
        scan, intake = _import_source(params, staging)
        rows, skipped = intake.rows, intake.skipped
        broken = [(source_root(data) / r["path"], r["decode_error"]) for r in rows if not r["decodes"]]
        if broken and data.on_undecodable == "error":
            raise _undecodable_error(broken)  # leaves data/raw as it was
    manifest = build_manifest(rows, data.split, data.seed)
    for entry in skipped[:MAX_LISTED]:
        log.warning("skipped %s: %s", entry["path"], entry["error"])
    if skipped:
        log.warning("skipped %d file(s) that do not decode (data.on_undecodable: skip); listed in %s",
                    len(skipped), layout.skipped)
    expected, _ = expected_categories(params)
    categories = order_categories(sorted(scan.files), expected)
    with atomic.atomic_path(layout.manifest) as tmp:
        manifest.to_parquet(tmp, index=False)
    atomic.write_json(layout.categories, categories)
    atomic.write_json(layout.skipped, skipped)
    if intake.stats is not None:
        with atomic.atomic_path(layout.source_stats) as tmp:
            intake.stats.save(tmp)
    counts = manifest["split"].value_counts()
    summary = {
        "images": len(manifest),
        "categories": len(categories),
        **{f"{split}_images": int(counts.get(split, 0)) for split in ("train", "val", "test")},
        "undecodable": len(broken) + len(skipped),
        "skipped_undecodable": len(skipped),
        "skipped_hidden": scan.skipped_hidden,
        "skipped_non_image": scan.skipped_non_image,
    }
    log.info("manifest: %s", summary)
    return summary
