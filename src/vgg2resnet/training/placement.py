"""Where training runs: device choice, mixed precision, torchrun's distributed environment, and
the relaunch that makes a training stage use every GPU of its host (`runtime.processes`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vgg2resnet.config import RuntimeParams, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 on CUDA (no loss scaling needed); full precision on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def select_device(params: RuntimeParams, local_rank: int = 0) -> torch.device:
    if params.device == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device is 'cuda' but no CUDA device is available; set it to 'auto' or 'cpu'")
    if params.device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def process_count(params: RuntimeParams) -> int:
    """runtime.processes: `auto` is one per visible GPU when training runs on CUDA, else 1."""
    on_cuda = params.device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if on_cuda else 0
    if params.processes == "auto":
        return max(gpus, 1)
    if on_cuda and params.processes > gpus:
        raise UserError(
            f"runtime.processes is {params.processes} but {gpus} GPU(s) are visible; set it to "
            "'auto' or at most the GPU count (CUDA_VISIBLE_DEVICES chooses which)"
        )
    return params.processes


def launch_command(params: RuntimeParams, argv: list[str]) -> list[str] | None:
    """The torchrun command that runs this very command (`argv`) as runtime.processes ranks, or
    None when it runs here: one process, or already a rank (torchrun sets WORLD_SIZE).

    One host gets a standalone rendezvous. Several hosts are joined through torchrun's own
    environment variables (PET_NNODES, PET_NODE_RANK, PET_RDZV_BACKEND, PET_RDZV_ENDPOINT,
    PET_RDZV_ID): when PET_RDZV_ENDPOINT is set, it is used instead."""
    count = process_count(params)
    if "WORLD_SIZE" in os.environ or count == 1:
        return None
    spec = getattr(sys.modules["__main__"], "__spec__", None)  # `python -m pkg` runs again as -m pkg
    target = ["-m", spec.name.removesuffix(".__main__")] if spec is not None else [argv[0]]
    rendezvous = [] if os.environ.get("PET_RDZV_ENDPOINT") else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(count),
        *rendezvous,
        *target,
        *argv[1:],
    ]


def start(params: RuntimeParams) -> Placement:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(params, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if rank == 0:
        log.info("device %s, world size %d", device, world_size)
    return Placement(device=device, rank=rank, world_size=world_size)


def stop(placement: Placement) -> None:
    if placement.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def ranks_agree(model: torch.nn.Module, placement: Placement) -> bool:
    """True when every rank holds the same weights (a cheap checksum gathered from all ranks)."""
    if not placement.distributed:
        return True
    with torch.no_grad():
        checksum = torch.stack(
            [sum(p.double().sum() for p in model.parameters()), sum(p.double().abs().sum() for p in model.parameters())]
        )
    gathered = [torch.zeros_like(checksum) for _ in range(placement.world_size)]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(g, gathered[0]) for g in gathered)
