"""Image data: the embedded demo set, ImageFolder import, the manifest and the transforms."""
