"""Where data lives (one rule from QCORE_DATA / QCORE_CACHE), how tables name it, and the up-front checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from qcore_bench.data import DatasetError
from qcore_bench.data.catalog import check_dataset, display_name
from qcore_bench.data.cifar import load_cifar10
from qcore_bench.paths import cache_dir, data_root, resolve_root


def image_tree(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    for split in splits:
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4), (200, 0, 0)).save(root / split / cls / "0.png")
    return root


def test_the_data_root_follows_qcore_cache_unless_qcore_data_is_set(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QCORE_DATA", raising=False)
    assert (cache_dir(), data_root()) == (tmp_path / "cache", tmp_path / "cache" / "data")
    with pytest.raises(DatasetError, match=f"in {tmp_path / 'cache' / 'data' / 'cifar-10-batches-py'};"):
        load_cifar10(None, cache_dir())  # the cell looks where the rule says
    assert resolve_root("cifar10-jpeg") == str(tmp_path / "cache" / "data" / "cifar10-jpeg")
    assert resolve_root(str(tmp_path / "abs")) == str(tmp_path / "abs")
    monkeypatch.setenv("QCORE_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data" and resolve_root("x") == str(tmp_path / "data" / "x")
    monkeypatch.delenv("QCORE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "qcore-bench"


def test_tables_name_data_sets_for_people() -> None:
    subset = {"max_train": 10000, "max_test": 2000}
    assert display_name("cifar10", subset) == "CIFAR-10 (10k/2k)"
    assert display_name("imagefolder", subset, "~/data/cifar10-jpeg") == "cifar10-jpeg (10k/2k)"
    assert display_name("imagefolder", subset, "/x/cifar10-jpeg", display="CIFAR-10") == "CIFAR-10 (10k/2k)"
    assert display_name("digits", {}) == "Digits"
    assert display_name("imagenet", {"image_size": 64, "max_train": 1500}) == "ImageNet (1.5k train, image_size=64)"
    assert display_name("not_installed", {}) == "not_installed"


def test_checks_find_missing_and_malformed_roots_without_loading(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    check_dataset("imagefolder", str(image_tree(tmp_path / "ok")), {"max_train": 10})
    check_dataset("digits", None, {})
    with pytest.raises(DatasetError, match=r"^imagefolder: root .*/missing does not exist; expected the layout"):
        check_dataset("imagefolder", str(tmp_path / "missing"), {})
    with pytest.raises(DatasetError, match=r"has neither test/ nor val/"):
        check_dataset("imagefolder", str(image_tree(tmp_path / "half", ("train",))), {})
    with pytest.raises(DatasetError, match=r"^imagenet: .*/ok has no val/ folder"):
        check_dataset("imagenet", str(tmp_path / "ok"), {})
    check_dataset("imagenet", str(image_tree(tmp_path / "inet", ("train", "val"))), {"image_size": 8})
    monkeypatch.setenv("QCORE_DATA", str(tmp_path))
    check_dataset("imagefolder", "ok", {})  # relative: under the data root
    with pytest.raises(DatasetError, match=r"^cifar100: not found .*cifar-100-python; .*download=True"):
        check_dataset("cifar100", None, {})
    (tmp_path / "cifar-10-batches-py").mkdir()
    # a folder without its files is not CIFAR-10
    with pytest.raises(DatasetError, match=r"^cifar10: not found \(or corrupted\) in .*cifar-10-batches-py") as err:
        check_dataset("cifar10", None, {})
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def module_cache() -> Path:
    return cache_dir()


def test_module_fixtures_cache_in_the_test_folder_not_the_users(module_cache: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    assert module_cache == tmp_path_factory.getbasetemp() / "qcore-cache"
