"""Data sets (in-memory uint8 tensors, or file lists for ImageNet), label noise, augmentation.

The loaders themselves (digits, synthetic, imagefolder, cifar10, cifar100, imagenet) are
reached through the ``qcore_bench.datasets`` entry points, so importing this package does
not import torchvision, scikit-learn or PIL. ``qcore_bench.data.device`` turns a loaded
data set into the trainer's batches (tensor fast path or DataLoader path). A dataset plugin
needs only what is exported here (README: Writing a dataset).
"""

from qcore_bench.data.augment import augment, normalize
from qcore_bench.data.bundle import DatasetError, FileData, ImageData, channel_stats, limit
from qcore_bench.data.catalog import describe
from qcore_bench.data.noise import apply_label_noise

__all__ = ["DatasetError", "FileData", "ImageData", "apply_label_noise", "augment", "channel_stats", "describe",
           "limit", "normalize"]
