"""The image formats this project reads: the allow-list of Pillow formats and their file suffixes.

The decoder (`vgg2resnet.data.images`) enforces the list; listing a folder (`imagefolder`) only
needs the suffixes, and so does not load torch for it.
"""

# Pillow format name -> the file suffixes an ImageFolder tree may hold it under.
FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "BMP": (".bmp",)}
SUFFIXES = frozenset(suffix for suffixes in FORMATS.values() for suffix in suffixes)
FORMAT_LIST = "PNG, JPEG, WebP or BMP"
