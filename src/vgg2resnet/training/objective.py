"""The knowledge-distillation loss of Hinton, Vinyals and Dean (2015), "Distilling the
Knowledge in a Neural Network":

    L = alpha * T^2 * KL(p || q) + (1 - alpha) * CE(s, y),   p = softmax(t / T), q = softmax(s / T)

with s, t the student's and teacher's logits, T the temperature and y the labels. The T^2
factor keeps the soft term's gradients on the same scale as the hard term's when T changes.

With a top-k logit cache (`distill.cache_top_k`, after FKD: Shen & Xing 2022, "A Fast
Knowledge Distillation Framework for Visual Recognition"), the teacher is known only on its
k largest logits, its set K; the others arrive as -inf. Then

    p_j = exp(t_j / T) / sum_{l in K} exp(t_l / T)            for j in K, else 0
    KL  = sum_{j in K} p_j * (log p_j - log q_j)

the teacher's softmax renormalised over K, against the student's log-softmax over all
categories. With K = all categories this is the full-logit loss exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# (images, indices, views) -> the teacher's logits for those views, live or from the cache
TeacherFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Distillation:
    """The teacher's part of the objective; absent for plain supervised training."""

    teacher: TeacherFn
    temperature: float
    alpha: float
    cache_views: int | None = None  # draw views from the K cached ones; None: a fresh view per epoch
    check: Callable[[int], float] | None = None  # per-epoch cache check, returns the worst difference


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p || q), averaged over the batch; teacher entries of -inf carry no mass."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    p = log_p.exp()
    # Where p is 0, log_p is -inf: `where` keeps that 0 * -inf out of the sum and its gradient.
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1).mean() * temperature**2


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
        kd = soft_kl(student_logits, teacher_logits, temperature)
    return alpha * kd + (1 - alpha) * ce, kd, ce
