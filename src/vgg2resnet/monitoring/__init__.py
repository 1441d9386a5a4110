"""Drift monitoring: Evidently reports of logged traffic against a version's reference, the drift
event, simulated traffic, teacher agreement."""
