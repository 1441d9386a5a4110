"""The BentoML model store: promote a gated student with its drift reference, find the promoted one, roll back."""
