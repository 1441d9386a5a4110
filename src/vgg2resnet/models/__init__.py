"""Teacher (VGG-16) and student (ResNet-50) builders and checkpoint I/O."""
