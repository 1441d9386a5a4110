"""FLOPs, size, CPU latency, throughput and accuracy of the teacher and every student variant
(the pruned ones included), in one run.

    python benchmarks/compress_variants.py --runs 50

Runs by hand (not in CI) after `dvc repro prune` (the demo's models/ must hold teacher.pt,
student.pt, the two ONNX files and models/pruned/). Every figure comes from the evaluate
stage's own code on the test split, on the CPU; ratios are against the teacher and the fp32
student of the same run.
"""

from __future__ import annotations

import argparse

from vgg2resnet.config import built_variants, load_params
from vgg2resnet.data.categories import data_categories
from vgg2resnet.evaluation.candidates import evaluate_teacher, evaluate_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per model (batch 32: runs/4)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the throughput figure")
    args = parser.parse_args()
    params = load_params(args.params)
    params = params.model_copy(
        update={
            "runtime": params.runtime.model_copy(update={"device": "cpu"}),
            "evaluate": params.evaluate.model_copy(
                update={"latency_runs": args.runs, "latency_warmup": 5, "latency_batch_size": args.batch_size}
            ),
        }
    )
    categories = data_categories(params)
    rows = {"teacher fp32 (PyTorch)": evaluate_teacher(params, categories)[0]}
    rows.update({f"student {v}": evaluate_variant(params, v, categories)[0] for v in built_variants(params)})
    teacher, student = rows["teacher fp32 (PyTorch)"], rows["student pytorch_fp32"]
    print(
        f"| model | MFLOPs | x teacher | x fp32 student | MB | x teacher | x fp32 student | batch 1 p50 ms "
        f"| x fp32 student | batch {args.batch_size} img/s | x fp32 student | test top-1 | vs fp32 student |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['flops'] / 1e6:.1f} | {r['flops'] / teacher['flops']:.3f}x "
            f"| {r['flops'] / student['flops']:.3f}x "
            f"| {r['size_mb']:.1f} | {r['size_mb'] / teacher['size_mb']:.3f}x "
            f"| {r['size_mb'] / student['size_mb']:.3f}x "
            f"| {r['cpu']['latency_ms_p50']:.2f} "
            f"| {r['cpu']['latency_ms_p50'] / student['cpu']['latency_ms_p50']:.2f}x "
            f"| {r['cpu']['throughput_img_s']:.0f} "
            f"| {r['cpu']['throughput_img_s'] / student['cpu']['throughput_img_s']:.2f}x "
            f"| {r['top1']:.2f}% | {r['top1'] - student['top1']:+.2f} pt |"
        )


if __name__ == "__main__":
    main()
