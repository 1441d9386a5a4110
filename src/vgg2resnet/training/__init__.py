"""The generic training loop that the teacher fine-tune, the student distillation and the pruned
fine-tune share: where it runs, its objective, epochs with resume, and best-epoch averaging."""
