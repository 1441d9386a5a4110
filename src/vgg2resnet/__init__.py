"""vgg2resnet: migrate a VGG-16 classifier to a distilled ResNet-50."""

import os

# Telemetry of the libraries this package drives stays off, set before any of them is imported
# (the CLI, the flows, the service and the tests all import this package first).
for _name, _value in {
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)
