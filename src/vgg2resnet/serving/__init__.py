"""Inference for the BentoML service: the Predictor with its drift features, upload checks and
limits, the error shape, the token, start-up checks and a local server."""
