"""Inference for the BentoML service: the promoted classifier with its drift features, and upload decoding."""
