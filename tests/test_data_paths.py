"""The two data paths: the in-memory tensor fast path and the DataLoader path (ImageNet layout).

Trees of real JPEG files are generated with PIL; the ImageNet path runs its real
transforms on them (RandomResizedCrop + flip, resize + center crop).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import random

import numpy as np
import pytest
import torch
from PIL import Image

from qcore_bench.data import DatasetError
from qcore_bench.data.bundle import limit, stratified_subset
from qcore_bench.data.device import LoaderData, TensorData, device_data
from qcore_bench.data.imagefolder import load_imagefolder
from qcore_bench.data.imagenet import load_image, load_imagenet, random_resized_crop_box
from qcore_bench.data.synthetic import load_synthetic
from qcore_bench.models import build
from qcore_bench.models.resnet import resnet8
from qcore_bench.quant import calibrate, quantize_model
from qcore_bench.training import TrainingError, evaluate, make_optimizer, train_epoch
from qcore_bench.recipes import Recipe

CPU = torch.device("cpu")
COLORS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def make_tree(root: pathlib.Path, sizes: list[tuple[int, int]], n_train: int = 6, n_val: int = 3,
              val: str = "val") -> pathlib.Path:
    """Class folders n00, n01, n02 of noisy red/green/blue JPEGs; image i gets sizes[i % len(sizes)]."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), (val, n_val)):
        for c, color in enumerate(COLORS):
            folder = root / split / f"n0{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                pixels = np.asarray(color)[None, None, :] + rng.normal(0, 40, (h, w, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_tree(tmp_path_factory.mktemp("odd"), [(40, 30), (25, 36), (33, 33)])


@pytest.fixture(scope="module")
def square_tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_tree(tmp_path_factory.mktemp("square"), [(32, 32)], n_train=8, n_val=4)


def test_imagenet_layout_errors_name_the_expected_layout(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"train/<class>/<image> and <root>/val/<class>") as err:
        load_imagenet(str(missing), tmp_path)
    assert str(missing) in str(err.value) and "data.root" in str(err.value)
    make_tree(tmp_path / "noval", [(8, 8)], val="test")
    with pytest.raises(DatasetError, match="has no val/ folder"):
        load_imagenet(str(tmp_path / "noval"), tmp_path)
    odd = make_tree(tmp_path / "odd", [(8, 8)])
    (odd / "val" / "n02").rename(odd / "val" / "n09")
    with pytest.raises(DatasetError, match="same class folders"):
        load_imagenet(str(odd), tmp_path)


def test_imagenet_loader_lists_files_labels_and_standard_settings(odd_tree: pathlib.Path, tmp_path) -> None:
    data = load_imagenet(str(odd_tree), tmp_path)
    assert data.classes == ("n00", "n01", "n02") and data.num_classes == 3 and data.in_channels == 3
    assert (len(data.train_files), len(data.test_files)) == (18, 9)
    assert data.train_y.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and data.test_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (data.image_size, data.resize, data.scale, data.flip) == (224, 256, (0.08, 1.0), True)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    small = load_imagenet(str(odd_tree), tmp_path, image_size=16, max_train=9, max_test=3)
    assert small.resize == 18 and torch.bincount(small.train_y).tolist() == [3, 3, 3]
    assert small.test_y.tolist() == [0, 1, 2]


def test_eval_transform_is_torchvisions_resize_and_center_crop(odd_tree: pathlib.Path, tmp_path) -> None:
    from torchvision import transforms

    data = load_imagenet(str(odd_tree), tmp_path, image_size=16)
    reference = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16), transforms.PILToTensor()])
    for path in data.train_files[:3]:
        with Image.open(path) as img:
            expected = reference(img.convert("RGB"))
        out = load_image(path, -1, data)
        assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
        assert torch.equal(out, expected)


def test_random_resized_crop_boxes_follow_scale_and_ratio() -> None:
    boxes = [random_resized_crop_box(40, 30, random.Random(seed), (0.08, 1.0)) for seed in range(400)]
    assert boxes == [random_resized_crop_box(40, 30, random.Random(seed), (0.08, 1.0)) for seed in range(400)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.08 * 1200 * 0.8 <= h * w  # area fraction >= 0.08 up to rounding of the sides
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    areas = [h * w / 1200 for _, _, h, w in boxes]
    assert min(areas) < 0.2 and max(areas) > 0.8  # the whole scale range is used
    # a range no crop can meet falls back to the central crop at the nearest allowed ratio
    assert random_resized_crop_box(100, 10, random.Random(0), (1.0, 1.0)) == (0, 43, 10, 13)


def test_training_transform_is_a_seeded_random_resized_crop_and_flip(odd_tree: pathlib.Path, tmp_path) -> None:
    import torchvision.transforms.functional as TF

    data = load_imagenet(str(odd_tree), tmp_path, image_size=16)
    path = data.train_files[0]
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    outs, flips = [], 0
    for seed in range(40):
        rng = random.Random(seed)  # the documented recipe, written out: crop box, then flip
        top, left, h, w = random_resized_crop_box(rgb.width, rgb.height, rng, (0.08, 1.0))
        expected = TF.resized_crop(rgb, top, left, h, w, [16, 16])
        flip = rng.random() < 0.5
        flips += flip
        expected = TF.pil_to_tensor(TF.hflip(expected) if flip else expected)
        out = load_image(path, seed, data)
        assert torch.equal(out, expected) and torch.equal(out, load_image(path, seed, data))
        outs.append(out.numpy().tobytes())
    assert len(set(outs)) == 40 and 10 < flips < 30


def test_loader_batches_depend_on_the_generator_only(odd_tree: pathlib.Path, tmp_path) -> None:
    data = load_imagenet(str(odd_tree), tmp_path, image_size=16)
    indices = torch.arange(18)

    def one_pass(workers: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = device_data(data, CPU, workers)
        assert isinstance(loader, LoaderData)
        return list(loader.train_batches(indices, 5, torch.Generator().manual_seed(seed), augmented=True))

    rng_before = torch.get_rng_state()
    serial = one_pass(0, 1)
    assert torch.equal(rng_before, torch.get_rng_state())  # no draw from the global RNG
    parallel = one_pass(2, 1)
    assert [len(i) for _, i in serial] == [5, 5, 5, 3]
    assert sorted(torch.cat([i for _, i in serial]).tolist()) == list(range(18))
    for (xa, ia), (xb, ib) in zip(serial, parallel):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    other = one_pass(0, 2)
    assert not torch.equal(serial[0][0], other[0][0])
    assert serial[0][0].dtype == torch.float32 and serial[0][0].shape == (5, 3, 16, 16)


def test_both_paths_give_identical_batches_and_training_without_augmentation(square_tree, tmp_path) -> None:
    files = load_imagenet(str(square_tree), tmp_path, image_size=32, resize=32)
    tensors = load_imagefolder(str(square_tree), tmp_path / "cache")
    tensors = dataclasses.replace(tensors, mean=files.mean, std=files.std)  # the same normalisation
    fast, loader = device_data(tensors, CPU), device_data(files, CPU, 0)
    assert isinstance(fast, TensorData) and isinstance(loader, LoaderData)
    assert (fast.n_train, fast.n_test) == (loader.n_train, loader.n_test) == (24, 12)
    assert torch.equal(torch.cat(list(fast.train_eval_batches(7))), torch.cat(list(loader.train_eval_batches(7))))
    for (xa, ya), (xb, yb) in zip(fast.test_batches(5), loader.test_batches(5)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)

    def train(data) -> tuple[list[float], tuple[float, float]]:
        model = quantize_model(build(resnet8, 3, 3, torch.Generator().manual_seed(0)), 2, 32)
        calibrate(model, torch.cat(list(data.train_eval_batches(8, torch.arange(8)))))
        opt = make_optimizer(model, Recipe(lr=0.05))
        labels = tensors.train_y
        losses = [train_epoch(model, opt, data, labels, torch.arange(24), batch_size=8, augmented=False,
                              generator=torch.Generator().manual_seed(e)) for e in range(2)]
        return losses, evaluate(model, data, 5)

    assert train(fast) == train(loader)


def test_tensor_path_keeps_the_original_draw_order() -> None:
    """Refactoring must not change the numbers of the in-memory path: randperm, then crop/flip per batch."""
    data = load_synthetic(None, pathlib.Path("."), n_train=40, image_size=8, channels=3)
    data = dataclasses.replace(data, crop_padding=2, flip=True)
    fast = TensorData(data, CPU)
    indices = torch.arange(3, 40, 2)
    got = list(fast.train_batches(indices, 8, torch.Generator().manual_seed(5), augmented=True))
    from qcore_bench.data import augment, normalize

    gen = torch.Generator().manual_seed(5)
    order = indices[torch.randperm(len(indices), generator=gen)]
    for i, (x, idx) in enumerate(got):
        expected_idx = order[8 * i:8 * i + 8]
        expected = normalize(augment(data.train_x[expected_idx], 2, True, gen), data.mean, data.std)
        assert torch.equal(idx, expected_idx) and torch.equal(x, expected)


def test_stratified_subset_is_proportional_fixed_and_sorted() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_subset(labels, 10, "max_train")
    assert torch.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, stratified_subset(labels, 10, "max_train")) and torch.equal(idx, idx.sort().values)
    assert stratified_subset(labels, None, "max_train") is None and stratified_subset(labels, 100, "x") is None
    with pytest.raises(DatasetError, match="max_train must be at least the number of classes"):
        stratified_subset(labels, 2, "max_train")
    data = load_synthetic(None, pathlib.Path("."), n_train=64, n_test=32, num_classes=4)
    small = limit(data, 16, 8)
    assert torch.bincount(small.train_y).tolist() == [4] * 4 and len(small.test_y) == 8
    assert small.mean == data.mean  # the normalisation of the whole set


def test_non_finite_loss_stops_training() -> None:
    data = load_synthetic(None, pathlib.Path("."), n_train=64)
    model = build(resnet8, 4, 1, torch.Generator().manual_seed(0))
    opt = make_optimizer(model, Recipe())

    def nan_loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits.sum(1) * math.nan

    with pytest.raises(TrainingError, match="non-finite training loss at batch 0"):
        train_epoch(model, opt, TensorData(data, CPU), data.train_y, torch.arange(64), batch_size=16,
                    augmented=False, generator=torch.Generator(), per_sample_loss=nan_loss)
