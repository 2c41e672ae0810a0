"""Training recipes: how a model is trained (the QAT student, the teacher, a proxy).

A leaf module (pydantic only), so that both the suite schema and the selector contract
(whose proxy recipes are recipes too) can build on it without importing each other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _no_bool(whole: bool) -> BeforeValidator:
    """YAML's true/false are numbers to pydantic (true == 1): refuse them where a number is meant."""
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a {'whole ' if whole else ''}number, got {str(value).lower()}")
        return value
    return BeforeValidator(check)


WHOLE, NUMBER = _no_bool(True), _no_bool(False)
MAX_EPOCHS = 100_000  # far beyond any real recipe; a typo like 1.0e+20 must not train forever


class Strict(BaseModel):
    """Unknown keys are errors; instances are immutable (cells are hashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipe(Strict):
    epochs: Annotated[int, WHOLE, Field(gt=0, le=MAX_EPOCHS)] = 20
    batch_size: Annotated[int, WHOLE, Field(gt=0)] = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, NUMBER, Field(gt=0)] = 0.05
    momentum: Annotated[float, NUMBER, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, NUMBER, Field(ge=0)] = 5e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    augment: bool = True
