"""Training recipes: how a model is trained (the QAT student, the teacher, a proxy).

A leaf module (pydantic only), so that both the suite schema and the selector contract
(whose proxy recipes are recipes too) can build on it without importing each other.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors; instances are immutable (cells are hashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipe(Strict):
    epochs: Annotated[int, Field(gt=0)] = 20
    batch_size: Annotated[int, Field(gt=0)] = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    augment: bool = True
