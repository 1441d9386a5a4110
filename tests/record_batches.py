"""`python tests/record_batches.py distill` (or under torchrun): the `vgg2resnet` command, with
the (image, view) pairs of every batch each process trained on written to
$RECORD_BATCHES/rank-<RANK>.json, as read where the teacher's logits are looked up: exactly
once per training step, after the step limit is applied.

With PER_RANK_FORWARD=N, one process runs the student's forward pass as N DDP ranks would:
a test's reference for a DDP run, written independently of the code under test."""

import dataclasses
import json
import os
from pathlib import Path

import torch

import vgg2resnet.stages.distill as stage
from vgg2resnet.cli import app

steps: list[list[list[int]]] = []
build = stage.teacher_signal


def recording(*args, **kwargs):
    distillation = build(*args, **kwargs)
    teacher = distillation.teacher

    def recorded(images, indices, views):
        steps.append([[int(i), int(v)] for i, v in zip(indices, views)])
        return teacher(images, indices, views)

    return dataclasses.replace(distillation, teacher=recorded)  # Distillation is frozen


stage.teacher_signal = recording


def per_rank_forward(ranks: int) -> None:
    """The student's training forward pass as DDP runs it on `ranks` ranks: each rank's share
    of the batch (every ranks-th image: the sharding deals them out in turn) through the whole
    network on its own, so BatchNorm sees that share's statistics; the running statistics kept
    are rank 0's, which DDP broadcasts to the others before every forward pass."""
    build = stage.build_student

    def built(*args, **kwargs) -> torch.nn.Module:
        model = build(*args, **kwargs)
        whole = model.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not model.training:
                return whole(x)
            shares = [whole(x[0::ranks])]
            kept = {(m, name): b for m in model.modules() for name, b in m._buffers.items() if b is not None}
            for (module, name), buffer in kept.items():  # the other ranks' updates go to copies
                module._buffers[name] = buffer.clone()
            shares += [whole(x[r::ranks]) for r in range(1, ranks)]
            for (module, name), buffer in kept.items():
                module._buffers[name] = buffer
            return torch.stack(shares, dim=1).reshape(len(x), *shares[0].shape[1:])

        model.forward = forward
        return model

    stage.build_student = built


if os.environ.get("PER_RANK_FORWARD"):
    per_rank_forward(int(os.environ["PER_RANK_FORWARD"]))
try:
    app(standalone_mode=False)
finally:
    out = Path(os.environ["RECORD_BATCHES"]) / f"rank-{os.environ.get('RANK', '0')}.json"
    if steps or not out.exists():  # a process that relaunched itself under torchrun trained nothing
        out.write_text(json.dumps(steps))
