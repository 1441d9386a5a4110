"""Whether `package`'s bounded samples are enough: the drift embedding's PCA fitted on n train
images against the whole split, and the drift reference profiled on n val images against
traffic from the same distribution.

    python benchmarks/drift_sample.py --project DIR [--bentoml-home DIR]

DIR is a project whose pipeline promoted a model (for example the 10^5-image project that
`benchmarks/pipeline_scale.py --keep` leaves). Runs by hand. It prints, for each n:

- `pca_captured_ratio_n=`: the held-out variance the top `serving.embedding_dims` axes of a
  PCA fitted on n train images capture, over what the axes fitted on the whole rest of the
  split capture (1.0: as good as all of them). Features of held-out train images, so
  neither fit has seen them.
- `reference_max_score_n=` and `reference_drifted_n=`: Evidently's drift report, as
  `vgg2resnet monitor` runs it, of one half of the val split (traffic with no drift by
  construction) against a reference of n images drawn from the other half: the largest
  column score with its method (above 1,000 reference rows Evidently uses the normed
  Wasserstein distance, drift above 0.1; at 1,000 or fewer, a test's p-value, drift below
  0.05) and whether it called drift, and the embedding's drift score (ROC AUC of a
  classifier telling the two apart; drift above monitoring.embedding_threshold). Above 1,000
  rows the column score is the reference's sampling noise: it must stay well under 0.1.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--bentoml-home", type=Path, default=None, help="the project's BentoML home")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000])
    parser.add_argument("--train-images", type=int, default=40_000, help="train images whose features are taken")
    args = parser.parse_args()
    if args.bentoml_home:
        os.environ["BENTOML_HOME"] = str(args.bentoml_home.resolve())
    os.chdir(args.project)

    from vgg2resnet.config import load_params
    from vgg2resnet.data.datasets import eval_loader, load_split, sample_rows
    from vgg2resnet.data.shards import StoredImages
    from vgg2resnet.data.transforms import transform_from_meta
    from vgg2resnet.monitoring.drift import build_report
    from vgg2resnet.packaging import store
    from vgg2resnet.serving.classifier import Predictor, embedding_columns, fit_projection

    params = load_params(Path("params.yaml"))
    version = store.current(params.serving.model_name)
    folder = Path(version.path)
    dims = params.serving.embedding_dims

    # PCA: held-out features of a quarter of the train images taken, fits on the rest.
    classifier = Predictor(folder)
    loader = eval_loader(
        params,
        "train",
        classifier.categories,
        params.evaluate.batch_size,
        transform_from_meta(classifier.meta["preprocessing"]),
        limit=args.train_images,
    )
    features = torch.cat([classifier.runner(images)[1] for images, *_ in loader]).double()
    order = np.random.default_rng(0).permutation(len(features))
    held_out, pool = features[order[: len(order) // 4]], features[order[len(order) // 4 :]]

    def captured(projection: dict) -> float:
        centred = held_out - held_out.mean(dim=0)
        return float((centred @ projection["components"].T.double()).pow(2).sum() / centred.pow(2).sum())

    whole = captured(fit_projection(pool.float(), dims))
    print(
        f"PCA: {len(pool)} train images fitted, {len(held_out)} held out; the whole pool's "
        f"{dims} axes capture {whole:.3f} of the held-out variance",
        flush=True,
    )
    for n in args.sizes:
        if n < len(pool):
            sample = pool[torch.from_numpy(np.random.default_rng(n).choice(len(pool), n, replace=False))]
            print(f"pca_captured_ratio_{n}={captured(fit_projection(sample.float(), dims)) / whole:.3f}")

    # Reference: the val split profiled as the service logs it, halved.
    val = load_split(Path(params.data.prepared_dir) / "manifest.parquet", "val")
    profiled = store.profile(classifier, StoredImages(params.data.raw_dir, val), params)
    halves = np.random.default_rng(1).permutation(len(profiled))
    traffic, pool_rows = profiled.iloc[halves[: len(halves) // 2]], profiled.iloc[halves[len(halves) // 2 :]]
    pool_rows = pool_rows.assign(category=val["category"].iloc[pool_rows.index].to_numpy())
    for n in args.sizes:
        if n <= len(pool_rows):
            reference = sample_rows(pool_rows.reset_index(drop=True), n, params.data.seed)
            _, summary = build_report(
                reference, traffic.reset_index(drop=True), embedding_columns(dims), params.monitoring
            )
            columns = summary["column_scores"]
            worst = max(columns, key=lambda c: columns[c]["score"])
            print(
                f"reference_max_score_{n}={columns[worst]['score']:.3f} ({worst}, {columns[worst]['method']}) "
                f"reference_drifted_{n}="
                f"{summary['drift_detected']} embedding_score_{n}={summary['embedding_drift'].get('score', 0):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
