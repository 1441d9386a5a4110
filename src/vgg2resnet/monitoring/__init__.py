"""Turning images into table columns for drift monitoring, and (later) the drift reports."""
