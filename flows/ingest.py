"""Prefect flow `ingest`: version a new drop of images with DVC (on demand).

    python -m flows.ingest /path/to/drop        # drop/<category>/<images>

Copies what is new into `data.incoming_dir`, `dvc add`s it, commits the .dvc file to git with
the version in the message and pushes the data; the same drop twice makes no new version. When
`data.source` is that folder, `sources` and `prepare` are then reproduced, so the manifest
holds the new version at once (`dvc repro` and the migrate flow would find it as well).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from vgg2resnet.config import load_params
from vgg2resnet.orchestration.ingest import ingest as version_drop
from vgg2resnet.orchestration.pipeline import reproduce


@flow(name="ingest", log_prints=True)
def ingest(drop: str, project_dir: str = ".", push: bool = True) -> dict:
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    result = version_drop(Path(drop), root, params.data.incoming_dir, params.data.follow_external_links, push=push)
    if result["new_version"] and Path(params.data.source) == params.data.incoming_dir:
        for stage in ("sources", "prepare"):
            reproduce(stage, root)
    create_markdown_artifact(
        key="data-version",
        markdown=(
            f"Data version `{result['version']}`: {result['new_images']} new image(s) from `{drop}`"
            + ("" if result["new_version"] else " (nothing new: same version)")
        ),
    )
    return result


if __name__ == "__main__":
    ingest(sys.argv[1])
