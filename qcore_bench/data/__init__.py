"""Data sets as in-memory uint8 tensors, label noise, and batched augmentation.

The loaders themselves (digits, synthetic, imagefolder, cifar10, cifar100) are reached
through the ``qcore_bench.datasets`` entry points, so importing this package does not
import torchvision, scikit-learn or PIL.
"""

from qcore_bench.data.augment import augment, normalize
from qcore_bench.data.bundle import DatasetError, ImageData
from qcore_bench.data.noise import apply_label_noise

__all__ = ["DatasetError", "ImageData", "apply_label_noise", "augment", "normalize"]
