"""The knowledge-distillation loss of Hinton, Vinyals and Dean (2015), "Distilling the
Knowledge in a Neural Network":

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

with s, t the student's and teacher's logits, T the temperature and y the labels. The T^2
factor keeps the soft term's gradients on the same scale as the hard term's when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, kd, ce), each averaged over the batch; without a teacher, kd is 0."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        kd = torch.zeros((), device=student_logits.device)
    else:
        kd = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean", log_target=True,
        ) * temperature**2
    return alpha * kd + (1 - alpha) * ce, kd, ce
