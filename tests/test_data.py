"""Data layer: loaders, label noise, augmentation and normalization."""

from __future__ import annotations

import inspect
import pathlib
import tarfile

import pytest
import torch
from PIL import Image

from qcore_bench.data import DatasetError, ImageData, apply_label_noise, augment, normalize
from qcore_bench.data import imagefolder
from qcore_bench.data.cifar import load_cifar10, load_cifar100
from qcore_bench.data.digits import load_digits
from qcore_bench.data.imagefolder import load_imagefolder
from qcore_bench.data.synthetic import load_synthetic

SHARED_CIFAR_JPEG = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def assert_same(a: ImageData, b: ImageData) -> None:
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.classes, a.mean, a.std) == (b.classes, b.mean, b.std)


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("loader", [load_digits, load_synthetic, load_imagefolder, load_cifar10, load_cifar100])
def test_loader_params_are_explicit_so_suites_can_be_validated(loader, tmp_path):
    params = inspect.signature(loader).parameters
    assert list(params)[:2] == ["root", "cache_dir"]
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(TypeError, match="no_such_param"):
        inspect.signature(loader).bind(None, tmp_path, no_such_param=1)


def test_digits_shapes_split_and_determinism(tmp_path):
    data = load_digits(None, tmp_path)
    assert data.classes == tuple(str(i) for i in range(10))
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 8)
    assert data.train_x.shape[1:] == (1, 8, 8) and data.train_x.dtype == torch.uint8
    assert len(data.train_y) + len(data.test_y) == 1797
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    # stratified 80/20: every class holds about 20 % of its images in test
    for cls in range(10):
        n_test = int((data.test_y == cls).sum())
        n_all = n_test + int((data.train_y == cls).sum())
        assert abs(n_test - 0.2 * n_all) <= 0.5
    assert (data.crop_padding, data.flip) == (1, False)
    pixels = data.train_x.double() / 255
    assert data.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-9)
    assert data.std[0] == pytest.approx(pixels.std(correction=0).item(), abs=1e-9)
    assert_same(data, load_digits("/ignored", tmp_path / "other"))


def test_synthetic_is_deterministic_and_seeds_differ(tmp_path):
    a = load_synthetic(None, tmp_path, seed=3)
    assert_same(a, load_synthetic(None, tmp_path, seed=3))
    b = load_synthetic(None, tmp_path, seed=4)
    assert not torch.equal(a.train_x, b.train_x)
    assert (a.train_x.shape, a.test_x.shape, a.num_classes) == ((512, 1, 8, 8), (256, 1, 8, 8), 4)
    assert (a.crop_padding, a.flip) == (0, False)


def test_synthetic_params_shape_the_data(tmp_path):
    data = load_synthetic(None, tmp_path, n_train=50, n_test=20, num_classes=5, image_size=16, channels=3, seed=1)
    assert data.train_x.shape == (50, 3, 16, 16) and data.test_x.shape == (20, 3, 16, 16)
    assert sorted(data.train_y.unique().tolist()) == [0, 1, 2, 3, 4]
    assert torch.bincount(data.train_y).tolist() == [10] * 5
    with pytest.raises(DatasetError, match="synthetic: num_classes must be >= 2, got 1"):
        load_synthetic(None, tmp_path, num_classes=1)


def test_synthetic_is_learnable_but_not_trivial(tmp_path):
    data = load_synthetic(None, tmp_path, seed=0)
    train, test = data.train_x.flatten(1).float(), data.test_x.flatten(1).float()
    centroids = torch.stack([train[data.train_y == k].mean(0) for k in range(data.num_classes)])
    accuracy = (torch.cdist(test, centroids).argmin(1) == data.test_y).float().mean().item()
    assert 0.5 < accuracy < 0.98


def write_image(path: pathlib.Path, size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)


@pytest.fixture
def tree(tmp_path) -> pathlib.Path:
    """A tiny ImageFolder tree of real JPEG and PNG files of odd sizes: cats red, dogs blue."""
    root = tmp_path / "tree"
    colors = {"cat": (220, 30, 30), "dog": (30, 30, 220)}
    for split, count in (("train", 3), ("test", 2)):
        for cls, color in colors.items():
            for i in range(count):
                suffix = ".jpg" if i % 2 == 0 else ".png"
                mode = "RGBA" if suffix == ".png" else "RGB"
                write_image(root / split / cls / f"{i}{suffix}", (10 + i, 7 + 2 * i), color, mode)
    return root


def test_imagefolder_decodes_resizes_and_labels(tree, tmp_path):
    data = load_imagefolder(str(tree), tmp_path / "cache", image_size=8)
    assert data.classes == ("cat", "dog")
    assert data.train_x.shape == (6, 3, 8, 8) and data.test_x.shape == (4, 3, 8, 8)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1] and data.test_y.tolist() == [0, 0, 1, 1]
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        red_minus_blue = x[:, 0].float().mean((1, 2)) - x[:, 2].float().mean((1, 2))
        assert torch.equal(red_minus_blue > 0, y == 0)
    assert (data.crop_padding, data.flip) == (4, True)
    assert data.mean[0] == pytest.approx(data.mean[2], abs=0.02)  # as many red as blue images


def test_imagefolder_second_load_reads_the_cache(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_imagefolder(str(tree), cache, image_size=8)
    files = list((cache / "data").iterdir())
    assert [f.name for f in files if f.name.startswith("imagefolder-") and f.suffix == ".pt"] == [files[0].name]
    assert len(files) == 1  # no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "_decode_file", no_decoding)
    second = load_imagefolder(str(tree), cache, image_size=8, crop_padding=0, flip=False)
    assert_same(first, second)
    assert (second.crop_padding, second.flip) == (0, False)
    with pytest.raises(AssertionError, match="decoded again"):
        load_imagefolder(str(tree), cache, image_size=6)  # another size is another cache entry


def test_imagefolder_cache_notices_new_and_changed_files(tree, tmp_path):
    cache = tmp_path / "cache"
    load_imagefolder(str(tree), cache, image_size=8)
    write_image(tree / "train" / "dog" / "extra.png", (5, 5), (0, 0, 255))
    assert load_imagefolder(str(tree), cache, image_size=8).train_x.shape[0] == 7
    write_image(tree / "train" / "cat" / "1.png", (30, 30), (0, 255, 0))  # train image 1, now green
    green = load_imagefolder(str(tree), cache, image_size=8).train_x[1]
    assert green[1].min() == 255 and green[0].max() == 0


def test_imagefolder_unreadable_cache_is_rebuilt(tree, tmp_path):
    cache = tmp_path / "cache"
    first = load_imagefolder(str(tree), cache, image_size=8)
    (cache_file,) = (cache / "data").iterdir()
    cache_file.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert_same(first, load_imagefolder(str(tree), cache, image_size=8))
    assert_same(first, load_imagefolder(str(tree), cache, image_size=8))  # rewritten


def test_imagefolder_pool_decoding_matches_serial(tree, tmp_path, monkeypatch):
    serial = load_imagefolder(str(tree), tmp_path / "serial", image_size=8)
    monkeypatch.setattr(imagefolder, "_POOL_THRESHOLD", 0)
    assert_same(serial, load_imagefolder(str(tree), tmp_path / "pool", image_size=8))


def test_imagefolder_without_image_size_names_the_odd_file(tree, tmp_path):
    with pytest.raises(DatasetError, match=r"1\.png.*image_size"):
        load_imagefolder(str(tree), tmp_path / "cache")


def test_imagefolder_accepts_val_and_same_sized_images(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for cls, color in (("a", (0, 0, 0)), ("b", (255, 255, 255))):
            write_image(root / split / cls / "x.png", (5, 4), color, "L")
    data = load_imagefolder(str(root), tmp_path / "cache")
    assert data.train_x.shape == (2, 3, 4, 5) and data.test_y.tolist() == [0, 1]
    assert data.train_x[1].min() == 255 and data.train_x[0].max() == 0


def test_imagefolder_layout_errors_name_root_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="train/<class>") as err:
        load_imagefolder(str(missing), tmp_path)
    assert str(missing) in str(err.value)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no train/ folder.*train/<class>"):
        load_imagefolder(str(tmp_path / "flat"), tmp_path)
    write_image(tmp_path / "odd" / "train" / "a" / "x.png", (4, 4), (0, 0, 0))
    write_image(tmp_path / "odd" / "test" / "b" / "x.png", (4, 4), (0, 0, 0))
    with pytest.raises(DatasetError, match="same class folders"):
        load_imagefolder(str(tmp_path / "odd"), tmp_path)


@pytest.mark.skipif(not SHARED_CIFAR_JPEG.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_imagefolder_on_real_cifar10_jpegs(tmp_path):
    wanted = {("train", "cat"): 150, ("train", "dog"): 150, ("test", "cat"): 50, ("test", "dog"): 50}
    root = tmp_path / "cifar10-jpeg"
    with tarfile.open(SHARED_CIFAR_JPEG) as archive:
        for member in archive:
            key = tuple(member.name.split("/")[:2])
            if member.isfile() and wanted.get(key, 0) > 0:
                archive.extract(member, root, filter="data")
                wanted[key] -= 1
                if not any(wanted.values()):
                    break
    data = load_imagefolder(str(root), tmp_path / "cache")
    assert data.classes == ("cat", "dog")
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [150, 150]
    assert all(0.3 < m < 0.65 for m in data.mean) and all(0.15 < s < 0.35 for s in data.std)


def test_cifar_missing_files_say_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as err:
        load_cifar10(str(tmp_path), tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "download=True" in message and "QCORE_DATA" in message
    monkeypatch.setenv("QCORE_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetError, match="cifar-100-python") as err:
        load_cifar100(None, tmp_path)
    assert str(tmp_path / "env") in str(err.value)


# ------------------------------------------------------------------------ label noise


def test_symmetric_noise_flips_exactly_the_requested_count():
    clean = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    noisy, mask = apply_label_noise(clean, 10, "symmetric", 0.3, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == 300
    assert torch.equal(mask, noisy != clean)
    assert noisy.dtype == clean.dtype and 0 <= int(noisy.min()) and int(noisy.max()) < 10
    assert clean.unique().numel() == 10  # input untouched


def test_symmetric_noise_is_uniform_over_other_classes_and_samples():
    clean = torch.zeros(4000, dtype=torch.int64)
    noisy, mask = apply_label_noise(clean, 4, "symmetric", 0.75, torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy[mask], minlength=4).tolist()
    assert counts[0] == 0 and all(850 < c < 1150 for c in counts[1:])
    assert abs(int(mask[:2000].sum()) - int(mask[2000:].sum())) < 150


def test_label_noise_is_deterministic_for_a_seed():
    clean = torch.arange(200) % 5
    a = apply_label_noise(clean, 5, "symmetric", 0.2, torch.Generator().manual_seed(7))
    b = apply_label_noise(clean, 5, "symmetric", 0.2, torch.Generator().manual_seed(7))
    c = apply_label_noise(clean, 5, "symmetric", 0.2, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kind", ["none", "symmetric"])
def test_rate_zero_changes_nothing(kind):
    clean = torch.arange(50) % 3
    noisy, mask = apply_label_noise(clean, 3, kind, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, clean) and not mask.any()


@pytest.mark.parametrize(("kind", "rate"), [("asymmetric", 0.1), ("symmetric", 1.0), ("symmetric", -0.1), ("none", 0.2)])
def test_label_noise_rejects_bad_settings(kind, rate):
    with pytest.raises(ValueError, match="unknown label noise kind 'asymmetric'|rate must be in \\[0, 1\\), got|'none' needs rate 0"):
        apply_label_noise(torch.zeros(10, dtype=torch.int64), 3, kind, rate, torch.Generator())


# ----------------------------------------------------------------------- augmentation


def random_batch(batch: int, seed: int = 0, size: tuple[int, int] = (6, 7)) -> torch.Tensor:
    """Nonzero random pixels, so every crop window (and its mirror) is unique."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)


def matching_windows(x: torch.Tensor, out: torch.Tensor, pad: int, mirrored: bool) -> list[tuple[int, int]]:
    """Naive reference: every (dy, dx) whose zero-padded window of x (maybe mirrored) equals out."""
    padded = torch.zeros(x.shape[0], x.shape[1] + 2 * pad, x.shape[2] + 2 * pad, dtype=x.dtype)
    padded[:, pad : pad + x.shape[1], pad : pad + x.shape[2]] = x
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
            if torch.equal(window.flip(-1) if mirrored else window, out):
                found.append((dy, dx))
    return found


def test_crop_takes_a_window_of_the_padded_image():
    x = random_batch(300)
    out = augment(x, crop_padding=1, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = []
    for i in range(len(x)):
        found = matching_windows(x[i], out[i], pad=1, mirrored=False)
        assert len(found) == 1, f"sample {i}: {found}"
        offsets.append(found[0])
    assert len(set(offsets)) == 9  # all 3 x 3 offsets are used


def test_flip_mirrors_about_half_of_the_samples():
    x = random_batch(400)
    out = augment(x, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same ^ mirrored)
    assert 150 < int(mirrored.sum()) < 250


def test_crop_and_flip_together():
    x = random_batch(100, size=(5, 5))
    out = augment(x, crop_padding=2, flip=True, generator=torch.Generator().manual_seed(3))
    kinds = []
    for i in range(len(x)):
        plain = matching_windows(x[i], out[i], pad=2, mirrored=False)
        mirrored = matching_windows(x[i], out[i], pad=2, mirrored=True)
        assert len(plain) + len(mirrored) == 1, f"sample {i}"
        kinds.append(bool(mirrored))
    assert 0 < sum(kinds) < len(kinds)


def test_augment_is_deterministic_for_a_seed_and_keeps_input():
    x = random_batch(64)
    before = x.clone()
    a = augment(x, 2, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, augment(x, 2, True, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, augment(x, 2, True, torch.Generator().manual_seed(6)))
    assert torch.equal(x, before)
    assert torch.equal(augment(x, 0, False, torch.Generator()), x)


def test_normalize_numerics():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 2, 1, 3).contiguous()
    out = normalize(x, (0.2, 0.5), (0.5, 0.25))
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = torch.tensor([[-0.4, 0.0, 1.6], [-2.0, -1.2, 2.0]]).view(1, 2, 1, 3).expand(2, 2, 1, 3)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="need 2 mean and std values, got 1 and 1"):
        normalize(x, (0.5,), (0.5,))


def test_normalized_train_set_has_zero_mean_unit_std(tmp_path):
    data = load_synthetic(None, tmp_path, channels=3)
    out = normalize(data.train_x, data.mean, data.std)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)
