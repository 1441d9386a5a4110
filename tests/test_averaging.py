"""Best-epoch weight averaging (distill.average_best), on small real torch modules."""

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vgg2resnet.training.averaging import BestEpochs, average_best, average_state_dicts


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer and move the BatchNorm statistics
    return net


def test_the_average_of_two_known_state_dicts_is_their_mean_and_integer_buffers_are_the_firsts():
    a, b = _net(0).state_dict(), _net(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    mean = average_state_dicts([a, b])
    assert mean.keys() == a.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(mean[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-7)
            assert mean[key].dtype == a[key].dtype
    assert mean["1.num_batches_tracked"] == a["1.num_batches_tracked"] != 7


def test_state_dicts_of_different_models_are_not_averaged():
    with pytest.raises(ValueError, match="different models"):
        average_state_dicts([_net(0).state_dict(), nn.Linear(2, 2).state_dict()])


@given(scores=st.lists(st.integers(0, 100), min_size=1, max_size=8), k=st.integers(1, 4))
def test_the_k_best_epochs_are_kept_ties_to_the_earlier_and_only_their_files_remain(
    scores: list[int], k: int, tmp_path_factory
):
    best = BestEpochs(tmp_path_factory.mktemp("best"), k)
    net = _net(0)
    for epoch, score in enumerate(scores, start=1):
        best.offer(epoch, float(score), net)
        best.prune()
    expected = sorted(range(1, len(scores) + 1), key=lambda e: (-scores[e - 1], e))[:k]
    assert [e["epoch"] for e in best.kept] == expected
    assert {p.name for p in best.folder.glob("*.pt")} == {f"epoch-{e}.pt" for e in expected}


def _bn_loader() -> DataLoader:
    torch.manual_seed(5)
    return DataLoader(TensorDataset(torch.randn(12, 3, 6, 6) * 3 + 1, torch.zeros(12)), batch_size=4)


def test_one_kept_epoch_is_returned_exactly_as_it_was_saved(tmp_path: Path):
    best = BestEpochs(tmp_path, 1)
    best.offer(1, 50.0, _net(1))
    best.offer(2, 40.0, _net(2))
    model, summary = average_best(
        _net(3), best, _bn_loader(), None, lambda m: pytest.fail("validated"), torch.device("cpu")
    )
    saved = _net(1).state_dict()
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert summary["selected"] == "best_epoch" and summary["best_epoch"] == 1


@pytest.mark.parametrize(("averaged_score", "selected"), [(61.0, "averaged"), (60.0, "averaged"), (59.0, "best_epoch")])
def test_the_average_is_kept_only_if_it_validates_at_least_as_well_as_the_best_epoch(
    tmp_path: Path, averaged_score: float, selected: str
):
    best = BestEpochs(tmp_path, 2)
    best.offer(1, 60.0, _net(1))
    best.offer(2, 55.0, _net(2))
    model, summary = average_best(_net(3), best, _bn_loader(), None, lambda m: averaged_score, torch.device("cpu"))
    a, b = _net(1).state_dict(), _net(2).state_dict()
    weights = {k for k in a if "running" not in k and "num_batches" not in k}
    state = model.state_dict()
    if selected == "averaged":
        assert all(torch.allclose(state[k], (a[k] + b[k]) / 2, atol=1e-7) for k in weights)
        # BatchNorm statistics re-estimated on the loader's images, not averaged
        images = torch.cat([x for x, _ in _bn_loader()])
        features = nn.functional.conv2d(images, state["0.weight"], state["0.bias"])
        torch.testing.assert_close(state["1.running_mean"], features.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    else:
        assert all(torch.equal(state[k], a[k]) for k in a)
    assert summary == {
        "best_epoch": 1,
        "val_accuracy_best_epoch": 60.0,
        "averaged_epochs": [1, 2],
        "val_accuracy_averaged": averaged_score,
        "selected": selected,
    }
