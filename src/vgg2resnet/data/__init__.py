"""Image data: the one decoder and input policy, the embedded digits, the ImageFolder scan and
parallel intake, the manifest, transforms, datasets and the one DataLoader factory."""
