"""Where and how a cell runs (device, cache, threads), and what every task's loop shares:
the data set loaded once per process and the checkpoint a cell resumes from."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import distributed
from .paths import resolve_root
from .registry import registry
from .store import Store
from .schema import DatasetSpec
from .wandb_log import WandbCfg

EpochCallback = Callable[[int, int, float], None]  # (epoch, total_epochs, headline metric of the epoch)


@dataclass(frozen=True)
class Runtime:
    """Settings that change where and how fast a cell runs, never its numbers."""

    device: torch.device
    cache_dir: Path
    eval_batch_size: int = 1024
    wandb: WandbCfg | None = None
    num_workers: int | None = None  # DataLoader workers for file data sets (ImageNet)
    cpu_threads: int = 1  # torch's intra-op threads for a CPU cell: fixed, so results reproduce elsewhere

    @property
    def workers(self) -> int:
        """``num_workers``, else $QCORE_NUM_WORKERS, else one per CPU core this process may use, up to 8
        (the cores are shared by the torchrun ranks of the node)."""
        if self.num_workers is not None:
            return self.num_workers
        if os.environ.get("QCORE_NUM_WORKERS"):
            return int(os.environ["QCORE_NUM_WORKERS"])
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(8, max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _load_data(spec_json: str, root: str | None, cache_dir: Path) -> Any:
    spec = DatasetSpec.model_validate_json(spec_json)
    return registry("datasets").get(spec.name)(resolve_root(root), cache_dir, **spec.params)


def load_data(spec: DatasetSpec, cache_dir: Path) -> Any:
    """The data set of a spec (``ImageData``, ``FileData`` or ``DetectionData``), loaded once per process."""
    return _load_data(json.dumps({"name": spec.name, "params": spec.params}, sort_keys=True), spec.root, cache_dir)


def load_state(store: Store, cell_id: str) -> dict[str, Any] | None:
    """The checkpoint to resume from: rank 0 loads (and repairs) it, then the other ranks read the same file."""
    state = store.load_checkpoint(cell_id) if distributed.is_main() else None
    if distributed.broadcast_object(state is not None) and state is None:
        state = store.read_checkpoint(cell_id)
    return state
