"""Shared cache artifacts (teachers, proxy runs, frozen-model outputs): built once, loaded by all.

A cache file that cannot be loaded (truncated by a full disk, damaged by a copy) would fail
every cell that reads it, with torch's zip error and no path. Instead it is named in a
warning, set aside as ``<file>.corrupt`` and built again, once: under the artifact's lock,
so the processes that found it damaged at the same moment wait for one rebuild and load it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, TypeVar

from .claims import file_lock

log = logging.getLogger(__name__)
T = TypeVar("T")


def _set_aside(path: Path, what: str, exc: Exception) -> None:
    corrupt = path.with_name(path.name + ".corrupt")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, corrupt)
    log.warning("%s %s is unreadable (%s: %s); kept as %s, building it again", what, path, type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "", corrupt.name)


def load_or_build(path: Path, load: Callable[[Path], T], build: Callable[[], T], what: str) -> tuple[T, bool]:
    """``(load(path), True)``, else ``(build(), False)`` with ``build`` writing ``path`` atomically.

    One process builds while the others wait on the lock; a file that does not load is set
    aside and built again by the first process that takes the lock after finding it so.
    """
    if path.is_file():
        try:
            return load(path), True
        except Exception:  # damaged: checked again, and set aside, under the lock
            pass
    with file_lock(path):
        if path.is_file():  # built (or rebuilt) by another process while this one waited
            try:
                return load(path), True
            except Exception as exc:
                _set_aside(path, what, exc)
        return build(), False
