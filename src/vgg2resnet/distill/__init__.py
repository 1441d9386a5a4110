"""The teacher's side of knowledge distillation: its logits, live or from the on-disk cache."""
