"""Structured channel pruning of the ResNet-50 student (PocketFlow's channel pruning, done
with Torch-Pruning's DepGraph, Fang et al., CVPR 2023).

Whole convolution channels are removed together with everything coupled to them: the
BatchNorm after a convolution, the next convolution's input channels, and every layer that
shares a residual sum. What remains is a smaller dense ResNet that any runtime (PyTorch, ONNX
Runtime fp32 or int8) runs faster, not a masked one of the same size. The classifier keeps
every category. Channels go by the L2 norm of their coupled weights, a little more of every
layer at each step, until the network's measured FLOPs reach the target.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vgg2resnet.config import UserError
from vgg2resnet.models.builders import count_flops, count_parameters

log = logging.getLogger(__name__)
# Each step removes about 1% more of every layer's original channels; at most 95%.
MAX_CHANNEL_SHARE, STEPS = 0.95, 95


def prune_to_flops(model: nn.Module, image_size: int, flops_ratio: float, round_to: int | None) -> dict:
    """Prune `model` (a torchvision ResNet, in place, on the CPU) until its FLOPs at image_size
    are at most flops_ratio of what they were; return what changed. Deterministic: the same
    weights and settings give the same network."""
    import torch_pruning as tp

    model.eval()
    example = torch.randn(1, 3, image_size, image_size)
    before = {"flops": count_flops(model, image_size), "parameters": count_parameters(model)}
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=MAX_CHANNEL_SHARE,
        iterative_steps=STEPS,
        ignored_layers=[model.fc],
        round_to=round_to,
    )
    flops, step = before["flops"], 0
    while flops > flops_ratio * before["flops"]:
        if step == STEPS:
            raise UserError(
                f"prune.flops_ratio {flops_ratio}: removing {MAX_CHANNEL_SHARE:.0%} of every layer's "
                f"channels leaves {flops / before['flops']:.3f} of the FLOPs; choose a larger ratio"
            )
        pruner.step()
        step += 1
        flops = count_flops(model, image_size)
    result = {
        "flops_before": before["flops"],
        "flops": flops,
        "flops_ratio": flops / before["flops"],
        "parameters_before": before["parameters"],
        "parameters": count_parameters(model),
        "channel_share_removed": step * MAX_CHANNEL_SHARE / STEPS,
        "features": model.fc.in_features,
        "channels": {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)},
    }
    log.info(
        "pruned %.0f%% of the channels: %.3g -> %.3g FLOPs (%.3fx), %.3g -> %.3g parameters, %d pooled features",
        100 * result["channel_share_removed"],
        before["flops"],
        flops,
        result["flops_ratio"],
        before["parameters"],
        result["parameters"],
        result["features"],
    )
    return result
