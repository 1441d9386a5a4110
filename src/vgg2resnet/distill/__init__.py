"""Knowledge distillation: the KD loss, the teacher signal (live or cached) and the training loop."""
