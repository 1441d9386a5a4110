"""The KD loss against hand-computed values and against its definition written out in numpy
(Hinton et al. 2015: T^2 times the batch mean of KL(teacher || student) at temperature T, plus
cross-entropy with label smoothing), its gradient included."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vgg2resnet.training.objective import kd_loss


def test_alpha_zero_is_plain_cross_entropy():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    total, _, ce = kd_loss(student, teacher, labels, temperature=1.0, alpha=0.0)
    assert total.item() == pytest.approx(F.cross_entropy(student, labels).item())
    assert ce.item() == pytest.approx(total.item())


def test_identical_logits_give_zero_kl():
    logits = torch.randn(4, 10)
    _, kd, _ = kd_loss(logits, logits.clone(), torch.zeros(4, dtype=torch.long), temperature=4.0, alpha=0.7)
    assert kd.item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_two_class_case():
    # teacher p = softmax([0, ln 3] / 1) = (1/4, 3/4); student q = (1/2, 1/2)
    # KL(p||q) = 1/4 ln(1/2) + 3/4 ln(3/2); CE(label 0) = ln 2
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    labels = torch.tensor([0])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    total, kd, ce = kd_loss(student, teacher, labels, temperature=1.0, alpha=0.5)
    assert kd.item() == pytest.approx(kl, rel=1e-5)
    assert ce.item() == pytest.approx(math.log(2), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * kl + 0.5 * math.log(2), rel=1e-5)


def test_temperature_squared_scaling():
    # At T=2 the logits are halved: teacher (0, ln 9) -> (0, ln 3), so KL is the case above, times T^2 = 4.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(9.0)]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    _, kd, _ = kd_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=1.0)
    assert kd.item() == pytest.approx(4 * kl, rel=1e-5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@settings(max_examples=200)
@given(
    batch=st.integers(2, 8),
    classes=st.integers(2, 10),
    temperature=st.floats(0.5, 8.0),
    alpha=st.floats(0.0, 1.0),
    smoothing=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_loss_and_its_gradient_match_the_definition_written_out(batch, classes, temperature, alpha, smoothing, seed):
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(0.0, 3.0, (2, batch, classes))
    labels = rng.integers(0, classes, batch)
    teacher_log, student_log = _log_softmax(teacher / temperature), _log_softmax(student / temperature)
    kd = temperature**2 * (np.exp(teacher_log) * (teacher_log - student_log)).sum() / batch
    target = np.full((batch, classes), smoothing / classes)
    target[np.arange(batch), labels] += 1.0 - smoothing
    ce = -(target * _log_softmax(student)).sum() / batch
    # d/ds of each term: T (softmax(s/T) - softmax(t/T)) / B and (softmax(s) - target) / B.
    gradient = (
        alpha * temperature * (np.exp(student_log) - np.exp(teacher_log))
        + (1 - alpha) * (np.exp(_log_softmax(student)) - target)
    ) / batch

    logits = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    total, kd_got, ce_got = kd_loss(
        logits,
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(labels),
        temperature,
        alpha,
        label_smoothing=smoothing,
    )
    total.backward()
    assert ce_got.item() == pytest.approx(ce, rel=1e-9, abs=1e-12)
    assert kd_got.item() == pytest.approx(kd if alpha > 0 else 0.0, rel=1e-9, abs=1e-12)
    assert total.item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), gradient, rtol=1e-7, atol=1e-12)


@settings(max_examples=200)
@given(
    batch=st.integers(1, 6),
    classes=st.integers(2, 12),
    data=st.data(),
    temperature=st.floats(0.5, 8.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_teacher_is_its_softmax_renormalised_over_k(batch, classes, data, temperature, seed):
    """A top-k cached teacher (-inf outside its k largest) against the formula written out: the
    teacher's softmax over its k logits, the student's log-softmax over all categories, KL over
    the k; and at k = all categories, the full-logit loss."""
    k = data.draw(st.integers(1, classes), label="k")
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(0.0, 3.0, (2, batch, classes))
    kept = np.argsort(-teacher, axis=1)[:, :k]
    shown = np.full_like(teacher, -np.inf)
    np.put_along_axis(shown, kept, np.take_along_axis(teacher, kept, axis=1), axis=1)
    t_k = np.take_along_axis(teacher, kept, axis=1) / temperature
    p = np.exp(t_k - t_k.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    log_q = _log_softmax(student / temperature)
    kd = temperature**2 * (p * (np.log(p) - np.take_along_axis(log_q, kept, axis=1))).sum() / batch
    dense_p = np.zeros_like(teacher)
    np.put_along_axis(dense_p, kept, p, axis=1)
    gradient = temperature * (np.exp(log_q) - dense_p) / batch  # sum of p over K is 1

    logits = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    _, kd_got, _ = kd_loss(logits, torch.tensor(shown), torch.zeros(batch, dtype=torch.long), temperature, 1.0)
    kd_got.backward()
    assert kd_got.item() == pytest.approx(kd, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), gradient, rtol=1e-7, atol=1e-12)
    if k == classes:
        _, full, _ = kd_loss(
            logits.detach(), torch.tensor(teacher), torch.zeros(batch, dtype=torch.long), temperature, 1.0
        )
        assert kd_got.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-12)
