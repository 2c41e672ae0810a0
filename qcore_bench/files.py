"""Atomic file writes: readers see the old content or the new, never half of it.

Shared by the store (cell records), the reports and the caches (teachers, proxies, outputs,
decoded images), so that none of them has to import another. Files are created with mode
0o666 filtered by the umask, like any ``open(path, "w")``: tables, plots and cell records in a
shared results folder stay readable by the group (``tempfile.mkstemp`` would make them 0600).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Any], Any], mode: str = "w") -> None:
    """Write through a temp file in the same folder, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """A JSON file (sorted keys, indented), written atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True))
