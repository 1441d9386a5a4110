"""The KD loss against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from vgg2resnet.distill.loss import kd_loss


def test_alpha_zero_is_plain_cross_entropy():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    total, kd, ce = kd_loss(student, teacher, labels, temperature=1.0, alpha=0.0)
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


def test_gradient_flows_to_the_student_only():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5, requires_grad=True)
    total, _, _ = kd_loss(student, teacher.detach(), torch.tensor([0, 1, 2]), 3.0, 0.5)
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
