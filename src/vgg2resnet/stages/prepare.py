"""Stage `prepare`: images -> data/raw (versioned shards) -> manifest.parquet + categories.json.

    vgg2resnet prepare          # or: dvc repro prepare

Each image is read once: hashed, fully decoded and packed into data/raw's shards from the same
bytes, by `runtime.num_workers` processes. A re-run decodes only the files whose content the
previous manifest does not list, writes only content the previous shards do not hold, and does
not even read a file whose stat key is unchanged (see `vgg2resnet.data.intake` and
`vgg2resnet.data.shards`). A file
that does not decode is handled by data.on_undecodable: `error` stops here, `record` keeps it
in the manifest for validation to fail on, `skip` leaves it out of data/raw and the manifest and
lists it in skipped.json, which validation reports as a warning.
"""

from __future__ import annotations

import logging

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params
from vgg2resnet.data.categories import expected_categories, order_categories
from vgg2resnet.data.imagefolder import source_root
from vgg2resnet.data.intake import MAX_LISTED, import_source, undecodable_error
from vgg2resnet.data.manifest import build_manifest
from vgg2resnet.data.shards import LOCATION, Packer

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    data, layout = params.data, Artifacts(params)
    with atomic.atomic_dir(layout.raw_dir) as staging:
        packer = Packer(staging, data.shard_bytes, layout.raw_dir if layout.raw_dir.is_dir() else None)
        scan, intake = import_source(params, packer)
        rows, skipped = intake.rows, intake.skipped
        failed = rows[~rows["decodes"].astype(bool)]
        broken = [(source_root(data) / path, error) for path, error in zip(failed["path"], failed["decode_error"])]
        if broken and data.on_undecodable == "error":
            raise undecodable_error(broken)  # leaves data/raw as it was
        manifest = build_manifest(rows, data.split, data.seed)
        manifest[LOCATION] = packer.finish(manifest)
    for entry in skipped[:MAX_LISTED]:
        log.warning("skipped %s: %s", entry["path"], entry["error"])
    if skipped:
        log.warning(
            "skipped %d file(s) that do not decode (data.on_undecodable: skip); listed in %s",
            len(skipped),
            layout.skipped,
        )
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
