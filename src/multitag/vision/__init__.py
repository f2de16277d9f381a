"""Pixels to features: backbones, the encoder, the image loader, inference engines and their caches.

Importing this package first makes torchvision importable with the CPU torch wheel (see
:mod:`multitag.vision.torchvision_shim`), before anything below imports timm.
"""

from multitag.vision.torchvision_shim import patch

patch()
