"""Where the trainer's batches come from: one small interface, two implementations.

``TensorData`` (small images: digits, CIFAR, the CIFAR-10 JPEG copy) keeps the whole set
as one uint8 tensor on the training device and augments and normalises whole batches with
tensor operations: no workers, no per-image Python. ``LoaderData`` (ImageNet) decodes and
augments files in DataLoader workers (pinned memory, persistent workers) and normalises on
the device. Both draw the order of a pass from the caller's generator, and the loader's
per-sample augmentation seeds too, so neither touches torch's global RNG.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from qcore_bench.data.augment import augment, normalize
from qcore_bench.data.bundle import FileData, ImageData

Batch = tuple[torch.Tensor, torch.Tensor]


class DeviceData(ABC):
    """A data set as the trainer reads it: normalised float batches on ``device``.

    Training indices are 0..n_train-1; index tensors handed out are int64 on the CPU.
    On CUDA the batches are channels_last (what cuDNN's fastest convolutions want).
    """

    def __init__(self, device: torch.device, mean: tuple[float, ...], std: tuple[float, ...],
                 n_train: int, n_test: int) -> None:
        self.device, self.mean, self.std = device, mean, std
        self.n_train, self.n_test = n_train, n_test

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    @abstractmethod
    def train_batches(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                      augmented: bool) -> Iterator[Batch]:
        """One pass over ``indices`` in an order drawn from ``generator``: (x, index) batches."""

    @abstractmethod
    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Un-augmented training images (all of them, or ``indices``), in order."""

    @abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """(x, y) over the whole test set, in order; y on the device."""


class TensorData(DeviceData):
    """The in-memory fast path: uint8 tensors on the device, batched crop/flip augmentation."""

    def __init__(self, data: ImageData, device: torch.device) -> None:
        super().__init__(device, data.mean, data.std, len(data.train_y), len(data.test_y))
        self.train_x, self.test_x = data.train_x.to(device), data.test_x.to(device)
        self.test_y = data.test_y.to(device)
        self.crop_padding, self.flip = data.crop_padding, data.flip

    def train_batches(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                      augmented: bool) -> Iterator[Batch]:
        order = indices[torch.randperm(len(indices), generator=generator)]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = self.train_x[idx.to(self.device)]
            if augmented:
                xb = augment(xb, self.crop_padding, self.flip, generator)
            yield self._finish(xb), idx

    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        x = self.train_x if indices is None else self.train_x[indices.to(self.device)]
        for i in range(0, len(x), batch_size):
            yield self._finish(x[i:i + batch_size])

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, self.n_test, batch_size):
            yield self._finish(self.test_x[i:i + batch_size]), self.test_y[i:i + batch_size]


class _Plan(torch.utils.data.Sampler):
    """The batch sampler of LoaderData's one DataLoader: the main process sets the next pass's items.

    Iterated in the main process only, so with persistent workers a new plan needs no
    new worker processes.
    """

    def __init__(self) -> None:
        self.items = torch.zeros(2, 0, dtype=torch.int64)  # rows: dataset index, augmentation seed
        self.batch_size = 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i in range(0, self.items.shape[1], self.batch_size):
            yield list(zip(*self.items[:, i:i + self.batch_size].tolist()))

    def __len__(self) -> int:
        return -(-self.items.shape[1] // self.batch_size)


class LoaderData(DeviceData):
    """The DataLoader path for data sets of files (ImageNet): workers decode and augment, uint8 batches
    travel through pinned memory and are normalised on the device."""

    def __init__(self, data: FileData, device: torch.device, num_workers: int) -> None:
        from qcore_bench.data.imagenet import FileDataset

        super().__init__(device, data.mean, data.std, len(data.train_files), len(data.test_files))
        self.test_y = data.test_y.to(device)
        self._plan = _Plan()
        self._loader = torch.utils.data.DataLoader(
            FileDataset(data), batch_sampler=self._plan, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(0))  # its worker seeds are unused: not from the global RNG
        self._busy = False

    def _run(self, index: torch.Tensor, seed: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        if self._busy:  # the single plan cannot serve two passes at once
            raise RuntimeError("LoaderData: a pass was started while another one is still running")
        self._busy = True
        self._plan.items, self._plan.batch_size = torch.stack([index, seed]), batch_size
        try:
            for x, idx in self._loader:
                yield self._finish(x.to(self.device, non_blocking=True)), idx
        finally:
            self._busy = False

    def train_batches(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                      augmented: bool) -> Iterator[Batch]:
        order = indices[torch.randperm(len(indices), generator=generator)].long()
        seeds = (torch.randint(0, 2**62, order.shape, generator=generator) if augmented
                 else torch.full_like(order, -1))  # -1: the evaluation transform
        yield from self._run(order, seeds, batch_size)

    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        index = torch.arange(self.n_train) if indices is None else indices.long().cpu()
        for x, _ in self._run(index, torch.full_like(index, -1), batch_size):
            yield x

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        index = torch.arange(self.n_test) + self.n_train
        for x, idx in self._run(index, torch.full_like(index, -1), batch_size):
            yield x, self.test_y[(idx - self.n_train).to(self.device)]


def device_data(data: ImageData | FileData, device: torch.device, num_workers: int = 0) -> DeviceData:
    """The trainer's view of a loaded data set: the tensor fast path or the DataLoader path."""
    if isinstance(data, FileData):
        return LoaderData(data, device, num_workers)
    return TensorData(data, device)
