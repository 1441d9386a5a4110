"""Inference for the BentoML service: safe decoding of uploads and the promoted classifier."""
