"""Held-out evaluation: every candidate on the test split (accuracy, per-category accuracy,
calibration, size, FLOPs, latency, agreement), and the teacher's check on val before distilling."""
