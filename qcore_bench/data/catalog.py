"""What the harness asks of a data set besides its tensors: a display name and an up-front check.

A dataset plugin is a loader ``(root, cache_dir, **params) -> ImageData | FileData``. It may
carry two attributes, set with ``describe``: ``display_name`` (how tables and plot titles
name it, e.g. "CIFAR-10") and ``check(root, **params)``, a cheap look at the files that raises
``DatasetError``. ``validate``, ``plan`` and ``run`` call the check once per data set of a
suite, before any cell is claimed, so a missing root is one line instead of a failed cell
per grid point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from qcore_bench.paths import resolve_root
from qcore_bench.registry import UnknownNameError, registry

Loader = TypeVar("Loader", bound=Callable[..., Any])


def describe(display_name: str | None = None,
             check: Callable[..., None] | None = None) -> Callable[[Loader], Loader]:
    """Attach a display name and a root check to a loader (both optional)."""
    def mark(loader: Loader) -> Loader:
        loader.display_name = display_name  # type: ignore[attr-defined]
        loader.check = check  # type: ignore[attr-defined]
        return loader
    return mark


def check_dataset(name: str, root: str | None, params: dict[str, Any]) -> None:
    """Run the loader's check, if it has one; raises DatasetError (or UnknownNameError)."""
    check = getattr(registry("datasets").get(name), "check", None)
    if check is not None:
        check(resolve_root(root), **params)


def _count(n: Any) -> str:
    if isinstance(n, int) and n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return f"{n:,}" if isinstance(n, int) else str(n)


def _params_text(params: dict[str, Any]) -> str:
    rest = {k: v for k, v in params.items() if k not in ("max_train", "max_test")}
    train, test = params.get("max_train"), params.get("max_test")
    subset = (f"{_count(train)}/{_count(test)}" if train is not None and test is not None
              else f"{_count(train)} train" if train is not None
              else f"{_count(test)} test" if test is not None else "")
    return ", ".join([*([subset] if subset else []), *(f"{k}={v}" for k, v in sorted(rest.items()))])


def display_name(name: str, params: dict[str, Any], root: str | None = None, display: str | None = None) -> str:
    """'CIFAR-10 (10k/2k)': the suite's ``display``, else the plugin's, else the root folder's name, else ``name``."""
    if display is None:
        try:
            display = getattr(registry("datasets").get(name), "display_name", None)
        except UnknownNameError:  # an uninstalled or broken plugin: its registered name will do
            display = None
    if display is None:
        display = Path(root).name if root else name
    extra = _params_text(params)
    return f"{display} ({extra})" if extra else display
