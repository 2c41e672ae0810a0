"""Where the cache and the data sets live: one rule, read from the environment.

- The cache (teachers, proxies, model outputs, decoded images) is ``$QCORE_CACHE``,
  default ``~/.cache/qcore-bench``.
- Data sets are read from a suite's ``data.root``; without one, from the data root:
  ``$QCORE_DATA``, default ``$QCORE_CACHE/data``. A relative ``data.root`` names a folder
  under the data root, so one suite finds its data on every machine that sets these.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$QCORE_CACHE``, else ``~/.cache/qcore-bench``."""
    return Path(os.environ.get("QCORE_CACHE") or Path.home() / ".cache" / "qcore-bench").expanduser()


def data_root() -> Path:
    """``$QCORE_DATA``, else the cache's ``data/`` folder."""
    data = os.environ.get("QCORE_DATA")
    return Path(data).expanduser() if data else cache_dir() / "data"


def resolve_root(root: str | None) -> str | None:
    """A suite's ``data.root`` as the loaders get it: absolute or ``~`` paths as given, relative ones under the data root."""
    if root is None:
        return None
    path = Path(root).expanduser()
    return str(path if path.is_absolute() else data_root() / path)
