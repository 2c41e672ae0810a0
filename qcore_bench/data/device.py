"""Where the trainer's batches come from: one small interface, two implementations.

``TensorData`` (small images: digits, CIFAR, the CIFAR-10 JPEG copy) keeps the whole set
as one uint8 tensor on the training device and augments and normalises whole batches with
tensor operations: no workers, no per-image Python. ``LoaderData`` (ImageNet) decodes and
augments files in DataLoader workers (pinned memory, persistent workers) and normalises on
the device. Both draw the order of a pass from the caller's generator, and the loader's
per-sample augmentation seeds too, so neither touches torch's global RNG.

With several processes (torchrun), a ``Shard`` names this rank's part: every rank draws
the same order and augmentation of a training pass and loads only its share of each global
batch; test passes are split into contiguous blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from qcore_bench.data.augment import augment, normalize
from qcore_bench.data.bundle import FileData, ImageData
from qcore_bench.distributed import Shard

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
                      augmented: bool, shard: Shard = Shard()) -> Iterator[Batch]:
        """One pass over ``indices`` in an order drawn from ``generator``: (x, index) batches.

        With a ``shard`` of several ranks: this rank's part of every global batch of
        ``batch_size`` (see ``Shard.batches``), augmented as in the single-process pass.
        """

    @abstractmethod
    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Un-augmented training images (all of them, or ``indices``), in order."""

    @abstractmethod
    def test_batches(self, batch_size: int, shard: Shard = Shard()) -> Iterator[Batch]:
        """(x, y) over the whole test set (or the shard's block of it), in order; y on the device."""


class TensorData(DeviceData):
    """The in-memory fast path: uint8 tensors on the device, batched crop/flip augmentation."""

    def __init__(self, data: ImageData, device: torch.device) -> None:
        super().__init__(device, data.mean, data.std, len(data.train_y), len(data.test_y))
        self.train_x, self.test_x = data.train_x.to(device), data.test_x.to(device)
        self.test_y = data.test_y.to(device)
        self.crop_padding, self.flip = data.crop_padding, data.flip

    def train_batches(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                      augmented: bool, shard: Shard = Shard()) -> Iterator[Batch]:
        order = indices[torch.randperm(len(indices), generator=generator)]
        for batch, part in shard.batches(len(order), batch_size):
            idx = order[batch][part]
            xb = self.train_x[idx.to(self.device)]
            if augmented:
                xb = augment(xb, self.crop_padding, self.flip, generator, part=(batch.stop - batch.start, part))
            yield self._finish(xb), idx

    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        x = self.train_x if indices is None else self.train_x[indices.to(self.device)]
        for i in range(0, len(x), batch_size):
            yield self._finish(x[i:i + batch_size])

    def test_batches(self, batch_size: int, shard: Shard = Shard()) -> Iterator[Batch]:
        block = shard.span(self.n_test)
        for i in range(block.start, block.stop, batch_size):
            end = min(i + batch_size, block.stop)
            yield self._finish(self.test_x[i:end]), self.test_y[i:end]


class _Plan(torch.utils.data.Sampler):
    """The batch sampler of LoaderData's one DataLoader: the main process sets the next pass's items.

    Iterated in the main process only, so with persistent workers a new plan needs no
    new worker processes.
    """

    def __init__(self) -> None:
        self.items = torch.zeros(2, 0, dtype=torch.int64)  # rows: dataset index, augmentation seed
        self.sizes: list[int] = []  # consecutive batches of items

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = 0
        for size in self.sizes:
            yield list(zip(*self.items[:, start:start + size].tolist()))
            start += size

    def __len__(self) -> int:
        return len(self.sizes)


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

    def _run(self, index: torch.Tensor, seed: torch.Tensor, sizes: int | list[int]) -> Iterator[Batch]:
        """Load ``index`` (with augmentation ``seed``s) in batches of ``sizes`` (one size: all but the last)."""
        if self._busy:  # the single plan cannot serve two passes at once
            raise RuntimeError("LoaderData: a pass was started while another one is still running")
        if isinstance(sizes, int):
            sizes = [min(sizes, len(index) - i) for i in range(0, len(index), sizes)]
        self._busy = True
        self._plan.items, self._plan.sizes = torch.stack([index, seed]), sizes
        try:
            for x, idx in self._loader:
                yield self._finish(x.to(self.device, non_blocking=True)), idx
        finally:
            self._busy = False

    def train_batches(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                      augmented: bool, shard: Shard = Shard()) -> Iterator[Batch]:
        order = indices[torch.randperm(len(indices), generator=generator)].long()
        seeds = (torch.randint(0, 2**62, order.shape, generator=generator) if augmented
                 else torch.full_like(order, -1))  # -1: the evaluation transform
        plan = list(shard.batches(len(order), batch_size))  # this rank's part of every global batch
        mine = [torch.arange(batch.start + part.start, batch.start + part.stop) for batch, part in plan]
        pos = torch.cat(mine) if mine else order[:0]
        yield from self._run(order[pos], seeds[pos], [part.stop - part.start for _, part in plan])

    def train_eval_batches(self, batch_size: int, indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        index = torch.arange(self.n_train) if indices is None else indices.long().cpu()
        for x, _ in self._run(index, torch.full_like(index, -1), batch_size):
            yield x

    def test_batches(self, batch_size: int, shard: Shard = Shard()) -> Iterator[Batch]:
        index = torch.arange(self.n_test)[shard.span(self.n_test)] + self.n_train
        for x, idx in self._run(index, torch.full_like(index, -1), batch_size):
            yield x, self.test_y[(idx - self.n_train).to(self.device)]


def device_data(data: ImageData | FileData, device: torch.device, num_workers: int = 0) -> DeviceData:
    """The trainer's view of a loaded data set: the tensor fast path or the DataLoader path."""
    if isinstance(data, FileData):
        return LoaderData(data, device, num_workers)
    return TensorData(data, device)
