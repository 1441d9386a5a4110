"""Held-out evaluation: accuracy, per-category accuracy, agreement, calibration, size and latency."""
