"""Weight averaging of a run's best epochs, as in Deci's ResNet-50 recipe (KD + EMA + averaging
the best checkpoints): keep the K epochs that validated best, average their weights, re-estimate
BatchNorm statistics on the train split, and keep the average only if it validates at least as
well as the best single epoch.

The kept epochs live on disk beside the training state, and the state lists them, so a run
killed and resumed averages exactly what an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from vgg2resnet import atomic

log = logging.getLogger(__name__)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors. Integer buffers (BatchNorm's
    num_batches_tracked) cannot be averaged meaningfully: they come from the first state."""
    if not states:
        raise ValueError("nothing to average")
    first = states[0]
    for other in states[1:]:
        if other.keys() != first.keys():
            raise ValueError("state dicts of different models cannot be averaged")
    return {
        key: (
            torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value.clone()
        )
        for key, value in first.items()
    }


class BestEpochs:
    """The K best epochs by validation accuracy, each one file under `folder`.

    Ties go to the earlier epoch, so the ranking never depends on anything but the scores."""

    def __init__(self, folder: Path, k: int, kept: list[dict] | None = None):
        self.folder, self.k = folder, k
        self.kept: list[dict] = list(kept or [])  # [{"epoch", "val_accuracy"}], best first

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch}.pt"

    def offer(self, epoch: int, val_accuracy: float, model: nn.Module) -> None:
        """Keep this epoch's weights if they rank among the K best."""
        ranked = sorted(
            [*self.kept, {"epoch": epoch, "val_accuracy": val_accuracy}], key=lambda e: (-e["val_accuracy"], e["epoch"])
        )
        self.kept = ranked[: self.k]
        if any(e["epoch"] == epoch for e in self.kept):
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(self.path(epoch)) as tmp:
                torch.save(model.state_dict(), tmp)

    def prune(self) -> None:
        """Delete the files of epochs not kept. Called only after the training state that lists
        `kept` is saved, so a kill in between never loses a listed epoch."""
        listed = {self.path(e["epoch"]) for e in self.kept}
        for path in self.folder.glob("epoch-*.pt"):
            if path not in listed:
                path.unlink()

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [torch.load(self.path(e["epoch"]), map_location="cpu", weights_only=True) for e in self.kept]


def kept_epochs_folder(state_path: Path) -> Path:
    """Where a run whose resumable state is `state_path` keeps its best epochs. Removed only
    after the state itself, once the model is saved: a run killed before that resumes and
    finds every epoch its state lists."""
    return state_path.parent / "best"


def average_best(
    model: nn.Module, best: BestEpochs, bn_loader: DataLoader, max_batches: int | None, validate, device: torch.device
) -> tuple[nn.Module, dict]:
    """(the model to keep, what was compared): the average of the kept epochs if it validates at
    least as well as the best of them, else the best epoch. `validate(model)` -> val accuracy."""
    states = best.states()
    top = best.kept[0]
    summary = {
        "best_epoch": top["epoch"],
        "val_accuracy_best_epoch": top["val_accuracy"],
        "averaged_epochs": [e["epoch"] for e in best.kept],
        "val_accuracy_averaged": None,
    }
    if len(states) == 1:  # the average of one epoch is that epoch, BatchNorm statistics and all
        model.load_state_dict(states[0])
        return model, {**summary, "selected": "best_epoch"}
    model.load_state_dict(average_state_dicts(states))
    # Averaged weights do not match any epoch's running statistics: estimate them afresh.
    update_bn(itertools.islice(bn_loader, max_batches), model, device)
    summary["val_accuracy_averaged"] = averaged = validate(model)
    if averaged >= top["val_accuracy"]:
        log.info(
            "averaged the %d best epochs %s: val accuracy %.2f%% (best epoch %d: %.2f%%)",
            len(states),
            summary["averaged_epochs"],
            averaged,
            top["epoch"],
            top["val_accuracy"],
        )
        return model, {**summary, "selected": "averaged"}
    log.info(
        "the average of epochs %s validates at %.2f%%, below epoch %d's %.2f%%: keeping epoch %d",
        summary["averaged_epochs"],
        averaged,
        top["epoch"],
        top["val_accuracy"],
        top["epoch"],
    )
    model.load_state_dict(states[0])
    return model, {**summary, "selected": "best_epoch"}
