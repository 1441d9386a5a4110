"""`python -m vgg2resnet` (what torchrun launches): the same commands as `vgg2resnet`."""

from vgg2resnet.cli import app

app()
