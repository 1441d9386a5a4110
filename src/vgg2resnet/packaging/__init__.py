"""The BentoML model store (promote a gated student with its drift reference, find the promoted
one, roll back) and the Bento built around the promoted version."""
