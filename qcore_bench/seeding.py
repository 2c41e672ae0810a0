"""Every random draw comes from a generator derived from the cell's seed.

A purpose string keeps streams independent: the data order, the label noise and the
selector each get their own generator, so adding a draw in one place never shifts the
numbers of another. Nothing here touches torch's or numpy's global state.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts``; draws are moved to the device by callers."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen
