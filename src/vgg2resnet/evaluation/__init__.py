"""Held-out evaluation: accuracy, per-category accuracy, calibration, the teacher's margin over chance, latency."""
