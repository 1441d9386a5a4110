"""The BentoML model store: promote a gated student, find the promoted one, roll back."""
